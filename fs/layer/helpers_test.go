package layer

import (
	"context"
	"io"
	"os"
	"sync/atomic"
	"testing"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
)

// memReader is an in-memory Reader over a fake uncompressed tar stream.
type memReader struct {
	data  []byte
	err   error // returned by every FetchAt when set
	calls atomic.Int64
}

func (m *memReader) FetchAt(ctx context.Context, p []byte, off int64) (int, error) {
	m.calls.Add(1)
	if m.err != nil {
		return 0, m.err
	}
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

var _ Reader = (*memReader)(nil)

// tocBuilder builds a TOC and the data stream it points into.
type tocBuilder struct {
	toc TOC
	r   memReader
}

var testTime = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

// add appends an entry with default metadata (0644 or 0755, root, testTime).
func (b *tocBuilder) add(e Entry) *Entry {
	if e.Mode == 0 {
		e.Mode = 0o644
		if e.Type == TypeDir {
			e.Mode = 0o755
		}
	}
	if e.ModTime.IsZero() {
		e.ModTime = testTime
	}
	b.toc.Entries = append(b.toc.Entries, e)
	return &b.toc.Entries[len(b.toc.Entries)-1]
}

// file appends a regular file whose content goes into the stream, after a
// fake 512-byte tar header.
func (b *tocBuilder) file(name, content string) *Entry {
	b.r.data = append(b.r.data, make([]byte, 512)...)
	off := int64(len(b.r.data))
	b.r.data = append(b.r.data, content...)
	return b.add(Entry{Name: name, Type: TypeReg, Offset: off, Size: int64(len(content))})
}

func (b *tocBuilder) dir(name string) *Entry { return b.add(Entry{Name: name, Type: TypeDir}) }

func (b *tocBuilder) symlink(name, target string) *Entry {
	return b.add(Entry{Name: name, Type: TypeSymlink, Linkname: target, Mode: 0o777})
}

func (b *tocBuilder) hardlink(name, target string) *Entry {
	return b.add(Entry{Name: name, Type: TypeHardlink, Linkname: target})
}

// requireFUSE skips tests that mount when the process cannot.
func requireFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE and overlayfs needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
}

// mount builds the tree and mounts it in a temp dir, unmounted on cleanup.
func mount(t testing.TB, toc TOC, r Reader, opts Options) string {
	t.Helper()
	requireFUSE(t)
	root, err := NewRoot(toc, r, opts)
	if err != nil {
		t.Fatalf("NewRoot: %v", err)
	}
	dir := t.TempDir()
	server, err := fusefs.Mount(dir, root, MountOptions(MountConfig{}))
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// mountBuilt mounts what b built.
func (b *tocBuilder) mount(t testing.TB, opts Options) string {
	return mount(t, b.toc, &b.r, opts)
}
