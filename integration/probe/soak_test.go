package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSoakCounts(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	bad := filepath.Join(dir, "bad")
	for p, content := range map[string]string{good: "good", bad: "changed"} {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	files := []soakFile{
		{path: good, sum: sum("good")},
		{path: bad, sum: sum("original")},
		{path: filepath.Join(dir, "missing"), sum: sum("x")},
	}
	out := filepath.Join(dir, "counts")
	if err := soak(context.Background(), files, out, 0, 3, rand.New(rand.NewPCG(1, 2))); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	line := string(data)
	var r, e, m int
	if _, err := fmt.Sscanf(line, "reads=%d errors=%d mismatches=%d", &r, &e, &m); err != nil || r != 3 || e != 3 || m != 3 {
		t.Errorf("after 3 passes over a good, a changed and a missing file: counts %q", line)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := soak(ctx, files, out, time.Hour, 0, rand.New(rand.NewPCG(1, 2))); err != nil {
		t.Errorf("soak with its context ended: %v", err)
	}
	if !strings.Contains(line, "last_error=") || !strings.HasSuffix(line, "\n") {
		t.Errorf("counts line %q", line)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".counts-*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestSoakList(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "list")
	for _, c := range []struct {
		text string
		ok   bool
	}{
		{sum("a") + " /a\n\n" + sum("b") + " /b\n", true},
		{"", false},
		{"abc /a\n", false},
		{sum("a") + " /a extra\n", false},
	} {
		if err := os.WriteFile(list, []byte(c.text), 0o644); err != nil {
			t.Fatal(err)
		}
		files, err := readSoakList(list)
		if (err == nil) != c.ok {
			t.Errorf("%q: err %v, want ok=%v", c.text, err, c.ok)
		}
		if c.ok && (len(files) != 2 || files[1].path != "/b" || files[1].sum != sum("b")) {
			t.Errorf("%q: parsed %+v", c.text, files)
		}
	}
	var out strings.Builder
	if err := run([]string{"soak", list, filepath.Join(dir, "c"), "forever"}, &out); err == nil {
		t.Error("bad pause accepted")
	}
}
