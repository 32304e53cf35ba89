package harness

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestPagemapPFN(t *testing.T) {
	for _, c := range []struct {
		entry uint64
		pfn   uint64
		ok    bool
	}{
		{0, 0, false},                               // never touched
		{pagemapPresent | 0x1234, 0x1234, true},     // resident
		{pagemapPresent | 1<<61 | 0x42, 0x42, true}, // file page or shared anon: flag bits ignored
		{pagemapPresent | 1<<55 | 0x42, 0x42, true}, // soft-dirty is not part of the frame
		{pagemapPresent | pagemapPFNMask, pagemapPFNMask, true},
		{pagemapSwapped | 0x0000_0007_ffff_ff00, 0, false}, // swap type and offset, not a frame
		{0x1234, 0, false},                                 // bits without present
	} {
		pfn, ok := pagemapPFN(c.entry)
		if pfn != c.pfn || ok != c.ok {
			t.Errorf("pagemapPFN(%#x) = %#x, %v; want %#x, %v", c.entry, pfn, ok, c.pfn, c.ok)
		}
	}
}

func TestParseMaps(t *testing.T) {
	text := "00400000-00c00000 r-xp 00000000 08:01 123 /bin/x\n" +
		"c000000000-c004000000 rw-p 00000000 00:00 0 \n" +
		"c004000000-c008000000 ---p 00000000 00:00 0 \n" +
		"7ffc0000-7ffc1000 rw-p 00000000 00:00 0                          [stack]\n" +
		"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n"
	got, err := parseMaps([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	want := []vmRange{{0x400000, 0xc00000}, {0xc000000000, 0xc004000000}, {0x7ffc0000, 0x7ffc1000}}
	if len(got) != len(want) {
		t.Fatalf("got %x, want %x", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %x, want %x", got, want)
		}
	}
	for _, bad := range []string{"zz-10 rw-p\n", "10 rw-p\n", "20-10 rw-p\n", "10-20\n"} {
		if _, err := parseMaps([]byte(bad)); err == nil {
			t.Errorf("parseMaps(%q) accepted", bad)
		}
	}
}

func TestCountDistinct(t *testing.T) {
	for _, c := range []struct {
		pfns []uint64
		want int
	}{
		{nil, 0},
		{[]uint64{7}, 1},
		{[]uint64{3, 1, 2}, 3},
		{[]uint64{5, 1, 5, 5, 1, 9}, 3}, // a page mapped by several processes, or twice by one
	} {
		if got := countDistinct(append([]uint64(nil), c.pfns...)); got != c.want {
			t.Errorf("countDistinct(%v) = %d, want %d", c.pfns, got, c.want)
		}
	}
}

// TestPageSetEntries decodes a synthetic pagemap: resident frames are
// kept, swapped and absent entries not, and a frame present twice (mapped
// by two processes) counts once.
func TestPageSetEntries(t *testing.T) {
	entries := []uint64{pagemapPresent | 10, 0, pagemapPresent | 11, pagemapSwapped | 99, pagemapPresent | 10, pagemapPresent}
	buf := make([]byte, 8*len(entries)+3) // a torn entry at the end is ignored
	for i, e := range entries {
		binary.LittleEndian.PutUint64(buf[8*i:], e)
	}
	var s PageSet
	if zeros := s.addEntries(buf); zeros != 1 {
		t.Errorf("%d entries present with frame 0, want 1", zeros)
	}
	if got := s.Distinct(); got != 2 {
		t.Fatalf("distinct %d, want 2", got)
	}
	s.addEntries(buf[:16]) // the second process maps frame 10 too
	if got := s.Distinct(); got != 2 {
		t.Fatalf("distinct %d after a shared frame, want 2", got)
	}
	s.Reset()
	if got := s.Distinct(); got != 0 {
		t.Fatalf("distinct after Reset %d", got)
	}
}

const pagemapChildEnv = "SOCI_PAGEMAP_TEST_CHILD"

// TestPagemapChild is the child of TestDistinctResidentSharedPages: it
// says it is up and waits for its stdin to close.
func TestPagemapChild(t *testing.T) {
	if os.Getenv(pagemapChildEnv) == "" {
		t.Skip("helper process")
	}
	os.Stdout.WriteString("up\n")
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// TestDistinctResidentSharedPages measures this test process and a child
// running the same executable: the two share the executable's page-cache
// pages, so together they hold fewer distinct pages than the sum of each
// alone; and one process's distinct pages are about its RSS.
func TestDistinctResidentSharedPages(t *testing.T) {
	if _, err := os.Stat("/proc/self/pagemap"); err != nil {
		t.Skip("no pagemap")
	}
	var set PageSet
	self, _, err := DistinctResidentBytes(&set, []int{os.Getpid()})
	if errors.Is(err, ErrPFNHidden) {
		t.Skip("not root: ", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	m, err := ReadProcMem(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if rss := m.RSSAnon + m.RSSFile; self < rss*3/4 || self > rss*5/4+(2<<20) {
		t.Errorf("distinct resident %d bytes, RSS %d: not about equal", self, rss)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestPagemapChild$")
	cmd.Env = append(os.Environ(), pagemapChildEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = stdin.Close(); _ = cmd.Wait() }()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || strings.TrimSpace(line) != "up" {
		t.Fatalf("child: %q, %v", line, err)
	}
	child, _, err := DistinctResidentBytes(&set, []int{cmd.Process.Pid})
	if err != nil {
		t.Fatal(err)
	}
	both, skipped, err := DistinctResidentBytes(&set, []int{os.Getpid(), cmd.Process.Pid, -1})
	if err != nil {
		t.Fatal(err)
	}
	if len(skipped) != 1 || skipped[0] != -1 {
		t.Errorf("skipped %v, want [-1]", skipped)
	}
	t.Logf("self %d KiB, child %d KiB, both %d KiB", self>>10, child>>10, both>>10)
	if both < max(self, child)*9/10 {
		t.Errorf("both %d below either alone (%d, %d)", both, self, child)
	}
	// The child's executable pages, at least its runtime's text, are the
	// parent's too.
	if both > self+child-(256<<10) {
		t.Errorf("both %d, self %d + child %d: shared pages counted twice", both, self, child)
	}
}
