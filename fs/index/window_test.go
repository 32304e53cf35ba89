package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

// The span manager's checkpoint window check, with real gzip layers and
// zTOCs built by soci.

// blobFetcher serves a blob from memory.
type blobFetcher struct{ blob []byte }

func (f blobFetcher) FetchAt(_ context.Context, p []byte, off int64) (int, error) {
	if off >= int64(len(f.blob)) {
		return 0, io.EOF
	}
	n := copy(p, f.blob[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// failures counts Observer failures by kind.
type failures struct {
	mu    sync.Mutex
	kinds map[string]int
}

func (f *failures) ObserveRead(time.Duration, int, int) {}
func (f *failures) Failure(kind string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.kinds == nil {
		f.kinds = map[string]int{}
	}
	f.kinds[kind]++
}
func (f *failures) count(kind string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.kinds[kind]
}

const windowSpan = 3 // the span whose window a test alters

// windowLayer returns the Layer of a real gzip layer's zTOC with the
// window of checkpoint windowSpan overwritten (alter) or not; the span
// digests stay valid.
func windowLayer(t *testing.T, tl testLayer, alter bool) *Layer {
	t.Helper()
	z, err := decodeZTOC(tl.ztocData, Limits{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if z.MaxSpanID < windowSpan+1 {
		t.Fatalf("want more than %d spans, have %d", windowSpan+1, z.MaxSpanID+1)
	}
	if alter {
		count := len(z.SpanDigests)
		first := 0
		if len(z.Checkpoints)-blobHeaderSize != count*checkpointSize {
			first = 1 // a version 1 blob without checkpoint 0
		}
		cp := z.Checkpoints[blobHeaderSize+(windowSpan-first)*checkpointSize:]
		win := cp[17:checkpointSize]
		copy(win, bytes.Repeat([]byte("hostile!"), len(win)/8))
	}
	c, err := convert(z)
	if err != nil {
		t.Fatal(err)
	}
	l, err := newLayer(z, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func windowManager(t *testing.T, tl testLayer, l *Layer, c *cache.Memory, obs span.Observer) *span.Manager {
	t.Helper()
	m, err := span.New(span.Options{
		Table: l.Spans, Fetcher: blobFetcher{tl.blob}, Cache: c, Decompressor: l,
		CacheKey: "sha256:layer/sha256:ztoc", Observer: obs,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// readSpans reads spans [first, last] in one read and checks what it got
// against the tar stream.
func readSpans(m *span.Manager, l *Layer, tl testLayer, first, last int) error {
	lo, hi := l.Spans.Spans[first].UncompressedStart, l.Spans.Spans[last].UncompressedEnd
	p := make([]byte, hi-lo)
	if _, err := m.FetchAt(context.Background(), p, lo); err != nil {
		return err
	}
	if !bytes.Equal(p, tl.tar[lo:hi]) {
		return fmt.Errorf("spans %d-%d: wrong bytes served", first, last)
	}
	return nil
}

func spanKey(l *Layer, i int) string {
	s := l.Spans.Spans[i]
	return "sha256:layer/sha256:ztoc/" + strconv.FormatInt(s.UncompressedStart, 10) + "-" + strconv.FormatInt(s.UncompressedEnd, 10)
}

// TestWindowAlteredReallyMatters: the altered window makes the span
// inflate to wrong bytes (what the check is for), the honest one does not.
func TestWindowAlteredReallyMatters(t *testing.T) {
	tl := newTestLayer(t, 400<<10, 64<<10)
	for _, alter := range []bool{false, true} {
		l := windowLayer(t, tl, alter)
		s := l.Spans.Spans[windowSpan]
		out, err := l.Decompress(tl.blob[s.CompressedStart:s.CompressedEnd], windowSpan)
		same := err == nil && bytes.Equal(out, tl.tar[s.UncompressedStart:s.UncompressedEnd])
		if same == alter {
			t.Fatalf("altered %v: decompressed bytes right %v", alter, same)
		}
	}
}

// TestWindowSequentialRead: reading the predecessor and then the span (or
// both at once) fails at the span with an altered window, as a
// verification error (EIO), and counts window_mismatch once; an honest zTOC
// serves the right bytes.
func TestWindowSequentialRead(t *testing.T) {
	tl := newTestLayer(t, 400<<10, 64<<10)
	honest := windowLayer(t, tl, false)
	m := windowManager(t, tl, honest, cache.NewMemory(), nil)
	if err := readSpans(m, honest, tl, 0, len(honest.Spans.Spans)-1); err != nil {
		t.Fatalf("honest zTOC: %v", err)
	}
	bad := windowLayer(t, tl, true)
	for _, oneRead := range []bool{false, true} {
		t.Run(map[bool]string{false: "two reads", true: "one read"}[oneRead], func(t *testing.T) {
			obs := &failures{}
			c := cache.NewMemory()
			m := windowManager(t, tl, bad, c, obs)
			var err error
			if oneRead {
				err = readSpans(m, bad, tl, windowSpan-1, windowSpan)
			} else {
				if err := readSpans(m, bad, tl, windowSpan-1, windowSpan-1); err != nil {
					t.Fatalf("predecessor: %v", err)
				}
				err = readSpans(m, bad, tl, windowSpan, windowSpan)
			}
			if !errors.Is(err, span.ErrWindowMismatch) || !errors.Is(err, span.ErrVerification) {
				t.Fatalf("read of the altered span: %v, want a window mismatch", err)
			}
			if _, err := c.Get(spanKey(bad, windowSpan)); !errdefs.IsNotFound(err) {
				t.Errorf("altered span cached: %v", err)
			}
			if err := readSpans(m, bad, tl, windowSpan, windowSpan); !errors.Is(err, span.ErrWindowMismatch) {
				t.Errorf("second read: %v, want a window mismatch", err)
			}
			if span.FailureWindowMismatch != metrics.FailureWindowMismatch {
				t.Error("span and metrics name the window failure kind differently")
			}
			if n := obs.count(span.FailureWindowMismatch); n != 1 {
				t.Errorf("window_mismatch counted %d times, want 1", n)
			}
			if err := readSpans(m, bad, tl, windowSpan+1, windowSpan+1); err != nil {
				t.Errorf("the next span (honest window): %v", err)
			}
		})
	}
}

// TestWindowReverseOrder: the span read first is served unchecked; reading
// its predecessor then finds the mismatch, removes the span from the cache
// and fails later reads of it.
func TestWindowReverseOrder(t *testing.T) {
	tl := newTestLayer(t, 400<<10, 64<<10)
	bad := windowLayer(t, tl, true)
	c := cache.NewMemory()
	m := windowManager(t, tl, bad, c, nil)
	if err := readSpans(m, bad, tl, windowSpan, windowSpan); err == nil {
		t.Fatal("the altered span served right bytes") // unchecked: wrong bytes, no error
	}
	if _, err := c.Get(spanKey(bad, windowSpan)); err != nil {
		t.Fatalf("span not cached after the unchecked read: %v", err)
	}
	if err := readSpans(m, bad, tl, windowSpan-1, windowSpan-1); err != nil {
		t.Fatalf("predecessor: %v", err)
	}
	if _, err := c.Get(spanKey(bad, windowSpan)); !errdefs.IsNotFound(err) {
		t.Errorf("altered span still cached: %v", err)
	}
	if err := readSpans(m, bad, tl, windowSpan, windowSpan); !errors.Is(err, span.ErrWindowMismatch) {
		t.Errorf("read after the predecessor: %v, want a window mismatch", err)
	}
	if m.Loader().ReadCached(context.Background(), windowSpan, make([]byte, 1), 0) {
		t.Error("ReadCached serves the condemned span")
	}
}

// TestWindowCheckedFromCache: a new Manager (a restart) reading only the
// span checks it against the predecessor cached by the earlier one.
func TestWindowCheckedFromCache(t *testing.T) {
	tl := newTestLayer(t, 400<<10, 64<<10)
	bad := windowLayer(t, tl, true)
	c := cache.NewMemory()
	if err := readSpans(windowManager(t, tl, bad, c, nil), bad, tl, windowSpan-1, windowSpan-1); err != nil {
		t.Fatal(err)
	}
	m := windowManager(t, tl, bad, c, nil)
	if err := readSpans(m, bad, tl, windowSpan, windowSpan); !errors.Is(err, span.ErrWindowMismatch) {
		t.Errorf("read with the predecessor cached: %v, want a window mismatch", err)
	}
}

// TestWindowLoad: the background walk's Load checks windows too.
func TestWindowLoad(t *testing.T) {
	tl := newTestLayer(t, 400<<10, 64<<10)
	for _, alter := range []bool{false, true} {
		l := windowLayer(t, tl, alter)
		c := cache.NewMemory()
		m := windowManager(t, tl, l, c, nil)
		err := m.Loader().Load(context.Background(), 0, len(l.Spans.Spans)-1, tl.blob, 0)
		if alter != errors.Is(err, span.ErrWindowMismatch) {
			t.Errorf("altered %v: Load: %v", alter, err)
		}
		_, cerr := c.Get(spanKey(l, windowSpan))
		if alter == (cerr == nil) {
			t.Errorf("altered %v: span cached: %v", alter, cerr)
		}
	}
}

// TestPoison: after Poison every read fails with ErrLayerBad (an EIO-class
// verification error), cached spans are gone, and Load refuses.
func TestPoison(t *testing.T) {
	tl := newTestLayer(t, 400<<10, 64<<10)
	l := windowLayer(t, tl, false)
	c := cache.NewMemory()
	m := windowManager(t, tl, l, c, nil)
	last := len(l.Spans.Spans) - 1
	if err := readSpans(m, l, tl, 0, last); err != nil {
		t.Fatal(err)
	}
	if c.Len() == 0 {
		t.Fatal("nothing cached")
	}
	m.Poison(context.Background(), errors.New("zTOC does not match the layer"))
	m.Poison(context.Background(), errors.New("again")) // a no-op
	for _, i := range []int{0, l.Spans.Find(l.Spans.UncompressedSize - 1)} {
		err := readSpans(m, l, tl, i, i)
		if !errors.Is(err, span.ErrLayerBad) || !errors.Is(err, span.ErrVerification) {
			t.Errorf("read of span %d after Poison: %v", i, err)
		}
	}
	if c.Len() != 0 {
		t.Errorf("%d cache entries left after Poison", c.Len())
	}
	if err := m.Loader().Load(context.Background(), 0, last, tl.blob, 0); !errors.Is(err, span.ErrLayerBad) {
		t.Errorf("Load after Poison: %v", err)
	}
	if c.Len() != 0 {
		t.Errorf("Load after Poison cached %d entries", c.Len())
	}
}
