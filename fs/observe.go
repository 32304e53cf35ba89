package fs

import (
	"context"
	"sort"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/fastsoci/soci-snapshotter/fs/background"
	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

// The hooks that feed a layer's metrics (metrics.Layer) from outside the
// packages that do the work: the FUSE requests, the registry fetches of the
// layer's blob, and the background walk's chunks.

// fuseObserver receives one observation per FUSE request of a layer.
type fuseObserver interface {
	FUSE(op metrics.FUSEOp, took time.Duration, failed bool, n int)
}

// observedFUSE times the FUSE requests the metrics name; the others pass
// through untouched.
type observedFUSE struct {
	fuse.RawFileSystem
	o fuseObserver
}

// fuseFailed reports whether a request failed inside the daemon: the tree
// answers "no such entry" and the like itself, a failed read is EIO.
func fuseFailed(s fuse.Status) bool { return s == fuse.EIO }

func (f observedFUSE) done(op metrics.FUSEOp, start time.Time, s fuse.Status, n int) {
	f.o.FUSE(op, time.Since(start), fuseFailed(s), n)
}

func (f observedFUSE) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	start := time.Now()
	s := f.RawFileSystem.Lookup(cancel, h, name, out)
	f.done(metrics.FUSENodeLookup, start, s, 0)
	return s
}

func (f observedFUSE) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	start := time.Now()
	s := f.RawFileSystem.GetAttr(cancel, in, out)
	op := metrics.FUSENodeGetattr
	if in.Flags()&fuse.FUSE_GETATTR_FH != 0 {
		op = metrics.FUSEFileGetattr
	}
	f.done(op, start, s, 0)
	return s
}

func (f observedFUSE) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	start := time.Now()
	n, s := f.RawFileSystem.GetXAttr(cancel, h, attr, dest)
	f.done(metrics.FUSENodeGetxattr, start, s, 0)
	return n, s
}

func (f observedFUSE) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	start := time.Now()
	n, s := f.RawFileSystem.ListXAttr(cancel, h, dest)
	f.done(metrics.FUSENodeListxattr, start, s, 0)
	return n, s
}

func (f observedFUSE) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	start := time.Now()
	s := f.RawFileSystem.Open(cancel, in, out)
	f.done(metrics.FUSENodeOpen, start, s, 0)
	return s
}

func (f observedFUSE) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	start := time.Now()
	b, s := f.RawFileSystem.Readlink(cancel, h)
	f.done(metrics.FUSENodeReadlink, start, s, 0)
	return b, s
}

func (f observedFUSE) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	start := time.Now()
	s := f.RawFileSystem.ReadDir(cancel, in, out)
	f.done(metrics.FUSENodeReaddir, start, s, 0)
	return s
}

func (f observedFUSE) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	start := time.Now()
	s := f.RawFileSystem.ReadDirPlus(cancel, in, out)
	f.done(metrics.FUSENodeReaddir, start, s, 0)
	return s
}

func (f observedFUSE) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	start := time.Now()
	r, s := f.RawFileSystem.Read(cancel, in, buf)
	n := 0
	if s == fuse.OK && r != nil {
		n = r.Size()
	}
	f.done(metrics.FUSEFileRead, start, s, n)
	return r, s
}

// blobObserver receives the registry fetches of a layer's blob and the
// background walk's chunks.
type blobObserver interface {
	RegistryFetch(took time.Duration, n int)
	BackgroundChunk(spans int, failed bool)
}

// observedBlob times every range fetch of a layer's blob (reads and the
// background walk alike).
type observedBlob struct {
	span.Fetcher
	o blobObserver
}

func (b observedBlob) FetchAt(ctx context.Context, p []byte, off int64) (int, error) {
	start := time.Now()
	n, err := b.Fetcher.FetchAt(ctx, p, off)
	b.o.RegistryFetch(time.Since(start), n)
	return n, err
}

// backgroundBlob counts the spans the background walk fetched, and its
// failed chunks, in the layer's metrics.
type backgroundBlob struct {
	span.Fetcher
	spans []span.Span
	o     blobObserver
}

func (b backgroundBlob) FetchAt(ctx context.Context, p []byte, off int64) (int, error) {
	n, err := b.Fetcher.FetchAt(ctx, p, off)
	switch {
	case span.CheckRead(n, len(p), off, err) == nil:
		b.o.BackgroundChunk(spansWithin(b.spans, off, off+int64(n)), false)
	case ctx.Err() == nil: // a cancelled walk is not a failure
		b.o.BackgroundChunk(0, true)
	}
	return n, err
}

// spansWithin counts the spans (ordered by offset) whose compressed bytes
// lie within [lo, hi).
func spansWithin(spans []span.Span, lo, hi int64) int {
	i := sort.Search(len(spans), func(i int) bool { return spans[i].CompressedStart >= lo })
	n := 0
	for ; i < len(spans) && spans[i].CompressedEnd <= hi; i++ {
		n++
	}
	return n
}

var (
	_ fuseObserver        = (*metrics.Layer)(nil)
	_ blobObserver        = (*metrics.Layer)(nil)
	_ span.Observer       = (*metrics.Layer)(nil)
	_ background.Observer = (*metrics.Metrics)(nil)
)
