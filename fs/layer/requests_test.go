package layer

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// countingFS counts the requests of some kinds that reach the tree.
type countingFS struct {
	fuse.RawFileSystem
	mu sync.Mutex
	n  map[string]int
}

func (c *countingFS) add(op string) {
	c.mu.Lock()
	c.n[op]++
	c.mu.Unlock()
}

func (c *countingFS) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = map[string]int{}
	return n
}

func (c *countingFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	c.add("open")
	return c.RawFileSystem.Open(cancel, in, out)
}

func (c *countingFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	c.add("release")
	c.RawFileSystem.Release(cancel, in)
}

func (c *countingFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	c.add("flush")
	return c.RawFileSystem.Flush(cancel, in)
}

func (c *countingFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	c.add("lookup")
	return c.RawFileSystem.Lookup(cancel, h, name, out)
}

func (c *countingFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	c.add("read")
	return c.RawFileSystem.Read(cancel, in, buf)
}

// TestFewRequestsPerFile: a directory walk gets the entries with their
// attributes (READDIRPLUS, no LOOKUP per file), and opening, reading and
// closing files costs one READ each: no OPEN, FLUSH or RELEASE but for the
// first file of the mount; a second pass is served by the page cache.
func TestFewRequestsPerFile(t *testing.T) {
	requireFUSE(t)
	const files = 200
	var tb tocBuilder
	var paths []string
	tb.dir("d")
	for i := range files {
		p := fmt.Sprintf("d/f%03d", i)
		tb.file(p, fmt.Sprintf("content of %d", i))
		paths = append(paths, p)
	}
	root, err := NewRoot(tb.toc, &tb.r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	o := MountOptions(MountConfig{})
	c := &countingFS{RawFileSystem: fusefs.NewNodeFS(root, o), n: map[string]int{}}
	dir := t.TempDir()
	server, err := fuse.NewServer(c, dir, &o.MountOptions)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	go server.Serve()
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	if err := server.WaitMount(); err != nil {
		t.Fatal(err)
	}
	c.take()

	ents, err := os.ReadDir(filepath.Join(dir, "d"))
	if err != nil || len(ents) != files {
		t.Fatalf("readdir: %d entries, %v", len(ents), err)
	}
	for _, e := range ents {
		if _, err := e.Info(); err != nil { // lstat
			t.Fatal(err)
		}
	}
	if n := c.take(); n["lookup"] > 1 {
		t.Errorf("walk of %d files: %d lookups, want their entries from READDIRPLUS", files, n["lookup"])
	}
	for pass := range 2 {
		for i, p := range paths {
			f, err := os.Open(filepath.Join(dir, p))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(f)
			f.Close()
			if err != nil || string(got) != fmt.Sprintf("content of %d", i) {
				t.Fatalf("read %s: %q, %v", p, got, err)
			}
		}
		n := c.take()
		if per := n["open"] + n["flush"] + n["release"]; per > 2 {
			t.Errorf("pass %d over %d files: %v, want no OPEN, FLUSH or RELEASE after the first file", pass, files, n)
		}
		if pass == 0 && n["read"] != files || pass == 1 && n["read"] != 0 {
			t.Errorf("pass %d over %d files: %d READs", pass, files, n["read"])
		}
	}
}
