package harness

import (
	"os"
	"testing"
)

func TestParseKB(t *testing.T) {
	var pss, anon int64
	parseKB("Rss:   100 kB\nPss:    42 kB\nPss_Anon:  7 kB\nbogus\nPss_File: x kB\n", map[string]*int64{"Pss:": &pss, "Pss_Anon:": &anon})
	if pss != 42<<10 || anon != 7<<10 {
		t.Fatalf("pss %d anon %d", pss, anon)
	}
}

func TestReadProcMemSelf(t *testing.T) {
	m, err := ReadProcMem(os.Getpid())
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	if m.PSS <= 0 || m.RSSAnon <= 0 || m.RSSFile <= 0 {
		t.Fatalf("implausible %+v", m)
	}
}
