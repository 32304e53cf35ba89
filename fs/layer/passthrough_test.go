package layer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// fakeLocal serves the builder's stream as local while local is set.
type fakeLocal struct {
	r     *memReader
	local atomic.Bool
}

func (l *fakeLocal) ReadLocal(ctx context.Context, p []byte, off int64) bool {
	if !l.local.Load() || off+int64(len(p)) > int64(len(l.r.data)) {
		return false
	}
	copy(p, l.r.data[off:])
	return true
}

func (l *fakeLocal) Has(ctx context.Context, off, n int64) bool { return l.local.Load() }

// passMount mounts b's tree with passthrough over local and a store of at
// most maxBytes; it skips when the kernel refuses passthrough.
func passMount(t *testing.T, b *tocBuilder, local *fakeLocal, maxBytes int64) (string, *notifyFS, *BackingFiles, *opens) {
	t.Helper()
	requireFUSE(t)
	files := NewBackingFiles(t.TempDir(), maxBytes)
	o := &opens{}
	root, err := NewRoot(b.toc, &b.r, Options{Passthrough: &Passthrough{Files: files, Local: local, Opened: o.add}})
	if err != nil {
		t.Fatal(err)
	}
	mo := MountOptions(MountConfig{})
	c := &notifyFS{countingFS: &countingFS{RawFileSystem: fusefs.NewNodeFS(root, mo), n: map[string]int{}},
		released: make(chan struct{}, 100)}
	dir, server := serveRaw(t, c, &mo.MountOptions, func() {
		ClosePassthrough(root)
		if n := files.Bytes(); n != 0 {
			t.Errorf("%d bytes of copies left after the layer closed", n)
		}
	})
	if err := ProbePassthrough(root, server); err != nil {
		t.Skipf("the kernel refuses FUSE passthrough: %v", err)
	}
	return dir, c, files, o
}

// notifyFS counts requests and signals each RELEASE, which the kernel
// sends after close returns.
type notifyFS struct {
	*countingFS
	released chan struct{}
}

func (c *notifyFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	c.countingFS.Release(cancel, in)
	select {
	case c.released <- struct{}{}:
	default:
	}
}

// drain forgets the RELEASEs signalled so far.
func (c *notifyFS) drain() {
	for {
		select {
		case <-c.released:
		default:
			return
		}
	}
}

// waitRelease waits for the next RELEASE (bounded: the kernel may never
// send it if the test is broken).
func (c *notifyFS) waitRelease(t *testing.T) {
	t.Helper()
	select {
	case <-c.released:
	case <-time.After(10 * time.Second):
		t.Fatal("no RELEASE within 10s of close")
	}
}

type opens struct {
	mu         sync.Mutex
	pass, fuse int
}

func (o *opens) add(pass bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if pass {
		o.pass++
	} else {
		o.fuse++
	}
}

func (o *opens) take() (pass, fuse int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	pass, fuse, o.pass, o.fuse = o.pass, o.fuse, 0, 0
	return pass, fuse
}

func readFile(t *testing.T, p, want string) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil || string(got) != want {
		t.Fatalf("read %s: %d bytes (want %d), equal %v, %v", p, len(got), len(want), string(got) == want, err)
	}
}

func content(i, n int) string { return strings.Repeat(fmt.Sprintf("file %d ", i), n) }

// TestPassthroughLocalFiles: a file whose bytes are local is read by the
// kernel from its copy, with no READ request and the right content; a file
// that is not is read through FUSE; every open is answered.
func TestPassthroughLocalFiles(t *testing.T) {
	var b tocBuilder
	for i := range 3 {
		b.file(fmt.Sprintf("f%d", i), content(i, 20000))
	}
	b.file("empty", "")
	b.file("small", "a small file")
	local := &fakeLocal{r: &b.r}
	dir, c, files, o := passMount(t, &b, local, 1<<30)
	c.take()

	readFile(t, filepath.Join(dir, "f0"), content(0, 20000))
	c.waitRelease(t)
	if n := c.take(); n["read"] == 0 || n["open"] != 1 || n["release"] != 1 {
		t.Errorf("not local: %v, want READs, one OPEN and one RELEASE", n)
	}
	if pass, fuse := o.take(); pass != 0 || fuse != 1 {
		t.Errorf("not local: %d passthrough and %d FUSE opens, want 0 and 1", pass, fuse)
	}
	local.local.Store(true)
	readFile(t, filepath.Join(dir, "f1"), content(1, 20000))
	n := c.take()
	if n["read"] != 0 || n["open"] != 1 {
		t.Errorf("local: %v, want one OPEN and no READ", n)
	}
	if pass, fuse := o.take(); pass != 1 || fuse != 0 {
		t.Errorf("local: %d passthrough and %d FUSE opens, want 1 and 0", pass, fuse)
	}
	if got, want := files.Bytes(), int64(len(content(1, 20000))); got < want {
		t.Errorf("copies hold %d bytes, want at least %d", got, want)
	}
	readFile(t, filepath.Join(dir, "empty"), "")
	readFile(t, filepath.Join(dir, "small"), "a small file")
	if pass, fuse := o.take(); pass != 0 || fuse != 2 {
		t.Errorf("an empty and a small file: %d passthrough and %d FUSE opens, want 0 and 2", pass, fuse)
	}
}

// TestPassthroughOneModePerInode: while a file is open with FUSE reads, a
// new open of it stays on FUSE even once it is local (the kernel fails the
// open of an inode in the other mode); once all are closed it switches.
func TestPassthroughOneModePerInode(t *testing.T) {
	var b tocBuilder
	b.file("f", content(7, 10000))
	local := &fakeLocal{r: &b.r}
	dir, c, _, o := passMount(t, &b, local, 1<<30)
	p := filepath.Join(dir, "f")
	held, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	local.local.Store(true)
	readFile(t, p, content(7, 10000))
	c.waitRelease(t) // of readFile's handle
	c.drain()
	if pass, fuse := o.take(); pass != 0 || fuse != 2 {
		t.Errorf("with a FUSE handle open: %d passthrough and %d FUSE opens, want 0 and 2", pass, fuse)
	}
	held.Close()
	c.waitRelease(t)
	h2, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	readFile(t, p, content(7, 10000)) // a second handle, in the same mode
	if pass, fuse := o.take(); pass != 2 || fuse != 0 {
		t.Errorf("after close: %d passthrough and %d FUSE opens, want 2 and 0", pass, fuse)
	}
}

// TestPassthroughBound: the copies stay within their bound, least recently
// used closed first, and files still read right.
func TestPassthroughBound(t *testing.T) {
	var b tocBuilder
	size := len(content(0, 10000))
	for i := range 5 {
		b.file(fmt.Sprintf("f%d", i), content(i, 10000))
	}
	local := &fakeLocal{r: &b.r}
	local.local.Store(true)
	dir, _, files, o := passMount(t, &b, local, int64(2*size+10))
	for pass := range 2 {
		for i := range 5 {
			readFile(t, filepath.Join(dir, fmt.Sprintf("f%d", i)), content(i, 10000))
			if got := files.Bytes(); got > int64(2*size+10) {
				t.Fatalf("pass %d file %d: copies hold %d bytes, bound %d", pass, i, got, 2*size+10)
			}
		}
	}
	if pass, _ := o.take(); pass != 10 {
		t.Errorf("%d passthrough opens, want 10", pass)
	}
}

// TestPassthroughRefused: when no backing file can be made the mount stays
// on FUSE reads, says so once, and goes back to FUSE no_open (OPEN answered
// ENOSYS, so the kernel sends no more).
func TestPassthroughRefused(t *testing.T) {
	requireFUSE(t)
	var b tocBuilder
	b.file("f", "data")
	b.file("big", content(1, 10000))
	local := &fakeLocal{r: &b.r}
	local.local.Store(true)
	var refused []error
	files := NewBackingFiles(filepath.Join(t.TempDir(), "missing"), 1<<20)
	o := &opens{}
	root, err := NewRoot(b.toc, &b.r, Options{Passthrough: &Passthrough{Files: files, Local: local, Opened: o.add,
		Refused: func(err error) { refused = append(refused, err) }}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	server, err := fusefs.Mount(dir, root, MountOptions(MountConfig{}))
	if err != nil {
		t.Fatal(err)
	}
	defer server.Unmount()
	if err := ProbePassthrough(root, server); err == nil || len(refused) != 1 || !errors.Is(refused[0], err) && refused[0] != err {
		t.Fatalf("probe: %v, refused %v: want an error told once", err, refused)
	}
	readFile(t, filepath.Join(dir, "f"), "data")
	readFile(t, filepath.Join(dir, "f"), "data")
	if pass, fuse := o.take(); pass != 0 || fuse != 0 {
		t.Errorf("refused: %d passthrough and %d answered opens, want none", pass, fuse)
	}
}

// TestPassthroughSmallFilesKeepNoOpen: a layer with few files that could
// gain from passthrough keeps FUSE no_open: no OPEN after the first.
func TestPassthroughSmallFilesKeepNoOpen(t *testing.T) {
	var b tocBuilder
	for i := range 10 {
		b.file(fmt.Sprintf("s%d", i), content(i, 10))
	}
	b.file("big", content(99, 10000))
	local := &fakeLocal{r: &b.r}
	local.local.Store(true)
	requireFUSE(t)
	o := &opens{}
	root, err := NewRoot(b.toc, &b.r, Options{Passthrough: &Passthrough{Files: NewBackingFiles(t.TempDir(), 1<<20), Local: local, Opened: o.add}})
	if err != nil {
		t.Fatal(err)
	}
	mo := MountOptions(MountConfig{})
	c := &countingFS{RawFileSystem: fusefs.NewNodeFS(root, mo), n: map[string]int{}}
	dir, server := serveRaw(t, c, &mo.MountOptions, nil)
	if err := ProbePassthrough(root, server); err != nil {
		t.Fatalf("probe of a layer without passthrough: %v", err)
	}
	for i := range 10 {
		readFile(t, filepath.Join(dir, fmt.Sprintf("s%d", i)), content(i, 10))
	}
	readFile(t, filepath.Join(dir, "big"), content(99, 10000))
	if n := c.take(); n["open"] > 1 {
		t.Errorf("%d OPEN requests, want at most the first (no_open)", n["open"])
	}
	if pass, fuse := o.take(); pass+fuse != 0 {
		t.Errorf("%d passthrough and %d FUSE opens answered, want none", pass, fuse)
	}
}
