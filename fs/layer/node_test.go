package layer

import (
	"context"
	"syscall"
	"testing"
)

// ctxReader records whether FetchAt's context was cancelled.
type ctxReader struct {
	memReader
	cancelled bool
}

func (c *ctxReader) FetchAt(ctx context.Context, p []byte, off int64) (int, error) {
	c.cancelled = ctx.Err() != nil
	return c.memReader.FetchAt(ctx, p, off)
}

// TestReadIgnoresCancellation checks that an interrupted request (go-fuse
// cancels its context on any signal to the reader) still reads.
func TestReadIgnoresCancellation(t *testing.T) {
	var b tocBuilder
	b.file("f", "data")
	r := &ctxReader{}
	r.data = b.r.data
	root, err := NewRoot(b.toc, r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ri := root.(*inode)
	f := &inode{n: ri.n.dir.get("f"), t: ri.t}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	buf := make([]byte, 10)
	res, errno := f.Read(ctx, nil, buf, 1)
	if errno != 0 {
		t.Fatalf("read: %v", errno)
	}
	if got, _ := res.Bytes(buf); string(got) != "ata" {
		t.Errorf("read %q", got)
	}
	if r.cancelled {
		t.Error("the Reader got a cancelled context")
	}
	if _, _, errno := f.Open(ctx, syscall.O_RDWR); errno != syscall.EROFS {
		t.Errorf("open for writing: %v", errno)
	}
	if _, errno := f.Readlink(ctx); errno != syscall.EINVAL {
		t.Errorf("readlink of a file: %v", errno)
	}
}
