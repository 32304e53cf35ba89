package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestBenchCommands(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"start":     "d/b\n",
		"d/a":       "unread",
		"d/b":       "c\nxx",
		"c":         "end\n",
		"e/1":       "1",
		"e/2":       "22",
		"e/3":       "333",
		"e/4/5/six": "444444",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	err := run([]string{"chain", dir, "--", "stat-all", filepath.Join(dir, "e"), "--", "read-fraction", filepath.Join(dir, "e"), "50",
		"--", "read-all", filepath.Join(dir, "e"), "--", "ready"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	// chain: start (4) + d/b (4) + c (4); stat-all: e, 1, 2, 3, 4, 4/5, six;
	// read-fraction 50%: 2nd and 4th of 1 2 3 six.
	want := "chain 3 12\nstat-all 7\nread-fraction 2 8\nread-all 4 12\nready\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
	if err := run([]string{"read-fraction", dir, "0"}, &out); err == nil {
		t.Errorf("read-fraction 0: want a usage error")
	}
}
