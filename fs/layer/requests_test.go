package layer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
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

func (c *countingFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	c.add("getxattr")
	return c.RawFileSystem.GetXAttr(cancel, h, attr, dest)
}

// mountCounting mounts root in a temp dir, unmounted on cleanup, and counts
// the requests that reach it.
func mountCounting(t *testing.T, root fusefs.InodeEmbedder) (string, *countingFS) {
	t.Helper()
	requireFUSE(t)
	o := MountOptions(MountConfig{})
	c := &countingFS{RawFileSystem: fusefs.NewNodeFS(root, o), n: map[string]int{}}
	dir, _ := serveRaw(t, c, &o.MountOptions, nil)
	return dir, c
}

// serveRaw mounts fs on a temporary directory with opts, serves it, and
// returns once the mount is up; the test's cleanup unmounts it and then
// runs after (nil: nothing).
func serveRaw(t *testing.T, fs fuse.RawFileSystem, opts *fuse.MountOptions, after func()) (string, *fuse.Server) {
	t.Helper()
	dir := t.TempDir()
	server, err := fuse.NewServer(fs, dir, opts)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	go server.Serve()
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		if after != nil {
			after()
		}
	})
	if err := server.WaitMount(); err != nil {
		t.Fatal(err)
	}
	return dir, server
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
	dir, c := mountCounting(t, root)
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

// TestNoXattrsOneRequest: a layer without extended attributes answers the
// first GETXATTR with ENOSYS, after which the kernel answers EOPNOTSUPP
// itself; a layer with one attribute anywhere keeps answering every file.
func TestNoXattrsOneRequest(t *testing.T) {
	for _, tc := range []struct {
		name     string
		xattr    bool // one file has an xattr
		opaque   bool // a directory holds an opaque marker
		disabled bool // Options.DisableXattrs
		want     syscall.Errno
	}{
		{name: "none", want: syscall.EOPNOTSUPP},
		{name: "disabled", xattr: true, disabled: true, want: syscall.EOPNOTSUPP},
		{name: "xattr", xattr: true, want: syscall.ENODATA},
		{name: "opaque", opaque: true, want: syscall.ENODATA},
		{name: "opaque disabled", opaque: true, disabled: true, want: syscall.ENODATA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const files = 20
			var tb tocBuilder
			tb.dir("d")
			tb.dir("o")
			if tc.opaque {
				tb.file("o/.wh..wh..opq", "")
			}
			for i := range files {
				tb.file(fmt.Sprintf("d/f%02d", i), "x")
			}
			if tc.xattr {
				tb.file("x", "x").Xattrs = map[string]string{"user.a": "1"}
			}
			root, err := NewRoot(tb.toc, &tb.r, Options{DisableXattrs: tc.disabled})
			if err != nil {
				t.Fatal(err)
			}
			dir, c := mountCounting(t, root)
			c.take()
			for i := range files {
				_, err := unix.Lgetxattr(filepath.Join(dir, fmt.Sprintf("d/f%02d", i)), "trusted.overlay.metacopy", make([]byte, 64))
				if !errors.Is(err, tc.want) {
					t.Fatalf("getxattr of file %d: %v, want %v", i, err, tc.want)
				}
			}
			want := files
			if tc.want == syscall.EOPNOTSUPP {
				want = 1
			}
			if n := c.take()["getxattr"]; n != want {
				t.Errorf("%d GETXATTR requests for %d files, want %d", n, files, want)
			}
			if tc.opaque {
				if v, err := getXattr(filepath.Join(dir, "o"), opaqueXattr); err != nil || v != "y" {
					t.Errorf("opaque = %q, %v", v, err)
				}
			}
			if got := listXattrs(t, filepath.Join(dir, "d/f00")); len(got) != 0 {
				t.Errorf("f00 lists %q", got)
			}
		})
	}
}
