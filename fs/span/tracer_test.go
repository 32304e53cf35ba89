package span

import (
	"sync"
	"testing"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

// recordingTracer collects the span ranges it is told.
type recordingTracer struct {
	mu  sync.Mutex
	got [][2]int
}

func (r *recordingTracer) DemandRead(first, last int) {
	r.mu.Lock()
	r.got = append(r.got, [2]int{first, last})
	r.mu.Unlock()
}

// TestTracerSeesDemandReadsOnly: the Tracer is told the spans of each
// FetchAt, cached or not, and nothing of Prefetch, read-ahead or the
// Loader.
func TestTracerSeesDemandReadsOnly(t *testing.T) {
	sizes := make([]int, 12)
	for i := range sizes {
		sizes[i] = 4000
	}
	l := buildLayer(t, 3, sizes, true)
	tr := &recordingTracer{}
	m := newManager(t, l, &fakeFetcher{blob: l.blob}, cache.NewMemory(), func(o *Options) {
		o.Tracer = tr
		o.ReadAhead = 8 * 4000
	})
	if _, err := m.Prefetch(t.Context(), []int{8, 9}, nil); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6000)
	// Sequential reads across span boundaries start read-ahead.
	for off := int64(0); off < 5*4000; off += int64(len(buf)) {
		if _, err := m.FetchAt(t.Context(), buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.FetchAt(t.Context(), buf[:10], 8*4000+5); err != nil { // prefetched: cached
		t.Fatal(err)
	}
	want := [][2]int{{0, 1}, {1, 2}, {3, 4}, {4, 5}, {8, 8}}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.got) != len(want) {
		t.Fatalf("tracer got %v, want %v", tr.got, want)
	}
	for k := range want {
		if tr.got[k] != want[k] {
			t.Fatalf("tracer got %v, want %v", tr.got, want)
		}
	}
}
