package fs

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

type fuseCall struct {
	op     metrics.FUSEOp
	failed bool
	n      int
}

type recordFUSE struct{ calls []fuseCall }

func (r *recordFUSE) FUSE(op metrics.FUSEOp, _ time.Duration, failed bool, n int) {
	r.calls = append(r.calls, fuseCall{op, failed, n})
}

// fakeRaw answers reads with data, or EIO when fail; lookups with ENOENT.
type fakeRaw struct {
	fuse.RawFileSystem
	data []byte
	fail bool
}

func (f fakeRaw) Read(_ <-chan struct{}, _ *fuse.ReadIn, _ []byte) (fuse.ReadResult, fuse.Status) {
	if f.fail {
		return nil, fuse.EIO
	}
	return fuse.ReadResultData(f.data), fuse.OK
}

func (f fakeRaw) Lookup(<-chan struct{}, *fuse.InHeader, string, *fuse.EntryOut) fuse.Status {
	return fuse.ENOENT
}

func (f fakeRaw) GetAttr(<-chan struct{}, *fuse.GetAttrIn, *fuse.AttrOut) fuse.Status { return fuse.OK }

func TestObservedFUSE(t *testing.T) {
	rec := &recordFUSE{}
	ok := observedFUSE{RawFileSystem: fakeRaw{RawFileSystem: fuse.NewDefaultRawFileSystem(), data: make([]byte, 7)}, o: rec}
	bad := observedFUSE{RawFileSystem: fakeRaw{RawFileSystem: fuse.NewDefaultRawFileSystem(), fail: true}, o: rec}
	if _, s := ok.Read(nil, &fuse.ReadIn{}, make([]byte, 7)); s != fuse.OK {
		t.Fatal(s)
	}
	if _, s := bad.Read(nil, &fuse.ReadIn{}, make([]byte, 7)); s != fuse.EIO {
		t.Fatal(s)
	}
	ok.Lookup(nil, &fuse.InHeader{}, "missing", &fuse.EntryOut{})
	ok.GetAttr(nil, &fuse.GetAttrIn{}, &fuse.AttrOut{})
	ok.GetAttr(nil, &fuse.GetAttrIn{Flags_: fuse.FUSE_GETATTR_FH}, &fuse.AttrOut{})
	ok.ReadDirPlus(nil, &fuse.ReadIn{}, nil) // ENOSYS from the default: not an I/O failure
	want := []fuseCall{
		{metrics.FUSEFileRead, false, 7},
		{metrics.FUSEFileRead, true, 0},
		{metrics.FUSENodeLookup, false, 0}, // ENOENT is an answer, not a failure
		{metrics.FUSENodeGetattr, false, 0},
		{metrics.FUSEFileGetattr, false, 0},
		{metrics.FUSENodeReaddir, false, 0},
	}
	if len(rec.calls) != len(want) {
		t.Fatalf("calls %v, want %v", rec.calls, want)
	}
	for i := range want {
		if rec.calls[i] != want[i] {
			t.Errorf("call %d: %+v, want %+v", i, rec.calls[i], want[i])
		}
	}
}

type recordBlob struct {
	fetches, bytes int
	spans, failed  int
}

func (r *recordBlob) RegistryFetch(_ time.Duration, n int) { r.fetches++; r.bytes += n }
func (r *recordBlob) BackgroundChunk(spans int, failed bool) {
	if failed {
		r.failed++
	}
	r.spans += spans
}

// fetcher returns n bytes and err.
type fetcher struct {
	n   int
	err error
}

func (f fetcher) FetchAt(_ context.Context, p []byte, _ int64) (int, error) {
	return min(f.n, len(p)), f.err
}

func TestObservedBlobs(t *testing.T) {
	spans := []span.Span{
		{CompressedStart: 10, CompressedEnd: 20},
		{CompressedStart: 20, CompressedEnd: 30},
		{CompressedStart: 30, CompressedEnd: 45},
	}
	rec := &recordBlob{}
	ob := observedBlob{Fetcher: fetcher{n: 100}, o: rec}
	// A chunk with the gzip header before span 0 and spans 0-1.
	bg := backgroundBlob{Fetcher: ob, spans: spans, o: rec}
	if _, err := bg.FetchAt(context.Background(), make([]byte, 30), 0); err != nil {
		t.Fatal(err)
	}
	// The last span with the trailer, io.EOF at the end.
	bg.Fetcher = observedBlob{Fetcher: fetcher{n: 100, err: io.EOF}, o: rec}
	if _, err := bg.FetchAt(context.Background(), make([]byte, 20), 30); !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	// A short fetch fails; one in a cancelled walk does not count.
	bg.Fetcher = observedBlob{Fetcher: fetcher{n: 3, err: io.ErrUnexpectedEOF}, o: rec}
	bg.FetchAt(context.Background(), make([]byte, 10), 10)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	bg.FetchAt(ctx, make([]byte, 10), 10)
	if rec.fetches != 4 || rec.bytes != 30+20+3+3 {
		t.Errorf("registry fetches %d (%d bytes), want 4 (56 bytes)", rec.fetches, rec.bytes)
	}
	if rec.spans != 3 || rec.failed != 1 {
		t.Errorf("background spans %d, failures %d; want 3, 1", rec.spans, rec.failed)
	}
}

func TestSpansWithin(t *testing.T) {
	spans := []span.Span{{CompressedStart: 0, CompressedEnd: 10}, {CompressedStart: 10, CompressedEnd: 20}, {CompressedStart: 20, CompressedEnd: 25}}
	for _, c := range []struct {
		lo, hi int64
		want   int
	}{
		{0, 25, 3}, {0, 24, 2}, {1, 25, 2}, {10, 20, 1}, {25, 30, 0}, {-5, 100, 3}, {30, 10, 0},
	} {
		if got := spansWithin(spans, c.lo, c.hi); got != c.want {
			t.Errorf("spansWithin(%d, %d) = %d, want %d", c.lo, c.hi, got, c.want)
		}
	}
	if spansWithin(nil, 0, 10) != 0 {
		t.Error("no spans")
	}
}
