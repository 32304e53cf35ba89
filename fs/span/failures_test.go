package span

import (
	"errors"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
	"github.com/fastsoci/soci-snapshotter/internal/clocktest"
)

// TestFailHold: right after a failed fetch, a read of the span fails at
// once without a request (the kernel's retry of a failed readahead); after
// the hold the span is fetched again and the read succeeds.
func TestFailHold(t *testing.T) {
	l := buildLayer(t, 31, []int{1000}, false)
	down := errors.New("registry down")
	f := &fakeFetcher{blob: l.blob, err: down}
	clock := clocktest.New()
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.FailHold = 200 * time.Millisecond; o.Now = clock.Now })
	for range 2 {
		if _, err := m.FetchAt(t.Context(), make([]byte, 10), 0); !errors.Is(err, down) {
			t.Fatalf("FetchAt = %v, want %v", err, down)
		}
	}
	if n := f.requests(); n != 1 {
		t.Fatalf("%d requests within the hold, want 1", n)
	}
	f.set(func(f *fakeFetcher) { f.err = nil })
	clock.Advance(199 * time.Millisecond)
	if _, err := m.FetchAt(t.Context(), make([]byte, 10), 0); !errors.Is(err, down) || f.requests() != 1 {
		t.Fatalf("FetchAt just before the hold ends = %v after %d requests, want %v after 1", err, f.requests(), down)
	}
	clock.Advance(time.Millisecond)
	if _, err := m.FetchAt(t.Context(), make([]byte, 10), 0); err != nil {
		t.Fatalf("after the hold: %v", err)
	}
	if n := f.requests(); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
}
