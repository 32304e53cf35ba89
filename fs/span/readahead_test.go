package span

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
	"github.com/fastsoci/soci-snapshotter/internal/clocktest"
)

// waitCached waits for every fetch the manager started (the read-ahead
// runs in the background) and fails the test unless want spans are cached.
func waitCached(t *testing.T, m *Manager, want int) {
	t.Helper()
	m.c.wg.Wait()
	if n, _ := m.Cached(); n < want {
		t.Fatalf("cached spans = %d, want %d", n, want)
	}
}

// beginSignal is a Demand that tells, once per read that waits for spans,
// that the read has planned them.
type beginSignal chan struct{}

func (b beginSignal) BeginDemand() { b <- struct{}{} }
func (b beginSignal) EndDemand()   {}

// TestReadAheadSequential: a run of sequential reads that crosses a span
// boundary fetches the spans within ReadAhead bytes ahead, one request per
// span (ReadAheadRequest), each span once.
func TestReadAheadSequential(t *testing.T) {
	sizes := []int{1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000}
	l := buildLayer(t, 31, sizes, true)
	f := &fakeFetcher{blob: l.blob}
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) {
		o.ReadAhead = 3000
		o.ReadAheadRequest = 1 // one span per request
	})
	p := make([]byte, 400)
	for off := int64(0); off < 1200; off += 400 { // spans 0 and 1
		if n, err := m.FetchAt(t.Context(), p, off); n != len(p) || err != nil || !bytes.Equal(p, l.data[off:off+400]) {
			t.Fatalf("FetchAt(%d) = %d, %v", off, n, err)
		}
	}
	// The read at 800 crossed into span 1: with the run 1200 bytes long,
	// span 2 (1200 bytes past 1200, within the 3000 of ReadAhead) comes
	// ahead.
	waitCached(t, m, 3)
	if got := f.fetchesPerSpan(l.table); !slices.Equal(got, []int{1, 1, 1, 0, 0, 0, 0, 0}) {
		t.Errorf("fetches per span = %v, want spans 0-2 once", got)
	}
	// Reading on keeps the window ahead; every span is fetched once.
	for off := int64(1200); off < int64(len(l.data)); off += 400 {
		n := min(400, int64(len(l.data))-off)
		if k, err := m.FetchAt(t.Context(), p[:n], off); int64(k) != n || err != nil || !bytes.Equal(p[:n], l.data[off:off+n]) {
			t.Fatalf("FetchAt(%d) = %d, %v", off, k, err)
		}
	}
	waitCached(t, m, len(sizes))
	for i, c := range f.fetchesPerSpan(l.table) {
		if c != 1 {
			t.Errorf("span %d fetched %d times, want once", i, c)
		}
	}
}

// TestReadAheadPause: a read after a pause starts a new run.
func TestReadAheadPause(t *testing.T) {
	l := buildLayer(t, 34, []int{1000, 1000, 1000, 1000, 1000}, false)
	f := &fakeFetcher{blob: l.blob}
	clock := clocktest.New()
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.ReadAhead = 1 << 20; o.Now = clock.Now })
	p := make([]byte, 900)
	if n, err := m.FetchAt(t.Context(), p, 0); n != len(p) || err != nil {
		t.Fatal(n, err)
	}
	clock.Advance(runIdle)
	if n, err := m.FetchAt(t.Context(), p, 900); n != len(p) || err != nil {
		t.Fatal(n, err)
	}
	m.c.wg.Wait() // any read-ahead started
	if got := f.fetchesPerSpan(l.table); !slices.Equal(got, []int{1, 1, 0, 0, 0}) {
		t.Errorf("fetches per span = %v, want spans 0-1 only", got)
	}
}

// TestReadAheadSparse: reads inside one span, or jumps across the layer,
// fetch nothing ahead.
func TestReadAheadSparse(t *testing.T) {
	l := buildLayer(t, 32, []int{4000, 4000, 4000, 4000, 4000}, false)
	f := &fakeFetcher{blob: l.blob}
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.ReadAhead = 1 << 20 })
	p := make([]byte, 500)
	for _, off := range []int64{0, 500, 1000, 1500, 12100, 12600} { // spans 0 then 3
		if n, err := m.FetchAt(t.Context(), p, off); n != len(p) || err != nil {
			t.Fatalf("FetchAt(%d) = %d, %v", off, n, err)
		}
	}
	m.c.wg.Wait() // any read-ahead started
	if got := f.fetchesPerSpan(l.table); !slices.Equal(got, []int{1, 0, 0, 1, 0}) {
		t.Errorf("fetches per span = %v, want only spans 0 and 3", got)
	}
}

// TestReserve: a read of a span a background walk reserved waits for the
// walk's Load and fetches nothing; a released reservation makes the reader
// fetch the span itself.
func TestReserve(t *testing.T) {
	l := buildLayer(t, 33, []int{1000, 1000, 1000, 1000}, true)
	f := &fakeFetcher{blob: l.blob}
	begun := make(beginSignal, 8)
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.Demand = begun })
	if k := m.Loader().Reserve(t.Context(), 0, 1); k != 1 {
		t.Fatalf("Reserve(0, 1) = %d, want 1", k)
	}
	if k := m.Loader().Reserve(t.Context(), 1, 2); k != 0 {
		t.Fatalf("Reserve(1, 2) of a reserved span = %d, want 0 (none)", k)
	}
	if !m.Loader().Has(t.Context(), 0) {
		t.Error("Has(0) = false for a reserved span")
	}
	type result struct {
		n   int
		err error
		p   []byte
	}
	read := func(off int64) chan result {
		ch := make(chan result, 1)
		go func() {
			p := make([]byte, 100)
			n, err := m.FetchAt(t.Context(), p, off)
			ch <- result{n, err, p}
		}()
		return ch
	}
	r0, r1 := read(10), read(1010)
	<-begun // both readers planned their span and wait for it
	<-begun
	m.c.wg.Wait() // and any fetch they started has asked the registry
	if got := f.requests(); got != 0 {
		t.Fatalf("requests = %d while the spans are reserved, want 0", got)
	}
	if err := m.Loader().Load(t.Context(), 0, 0, l.blob[:l.table.Spans[0].CompressedEnd], 0); err != nil {
		t.Fatal(err)
	}
	m.Loader().Release(0, 1) // span 0 is loaded: only span 1 is released
	for _, c := range []struct {
		ch  chan result
		off int64
	}{{r0, 10}, {r1, 1010}} {
		r := <-c.ch
		if r.n != 100 || r.err != nil || !bytes.Equal(r.p, l.data[c.off:c.off+100]) {
			t.Errorf("read at %d = %d, %v", c.off, r.n, r.err)
		}
	}
	if got := f.fetchesPerSpan(l.table); !slices.Equal(got, []int{0, 1, 0, 0}) {
		t.Errorf("fetches per span = %v, want span 1 once (released), span 0 never", got)
	}
}

// slowFetcher advances a fake clock by d during every request: a link on
// which each fetch takes d.
type slowFetcher struct {
	Fetcher
	clock *clocktest.Fake
	d     time.Duration
}

func (s slowFetcher) FetchAt(ctx context.Context, p []byte, off int64) (int, error) {
	s.clock.Advance(s.d)
	return s.Fetcher.FetchAt(ctx, p, off)
}

// TestReadAheadSlowFetch: a read that waited longer than runIdle for its
// span does not end the run it is part of: the pause counts from when it
// returned, so the next read ahead of it still fetches ahead.
func TestReadAheadSlowFetch(t *testing.T) {
	l := buildLayer(t, 35, []int{1000, 1000, 1000, 1000, 1000}, false)
	f := &fakeFetcher{blob: l.blob}
	clock := clocktest.New()
	m := newManager(t, l, slowFetcher{f, clock, 2 * runIdle}, cache.NewMemory(), func(o *Options) {
		o.ReadAhead = 1 << 20
		o.ReadAheadRequest = 1 // one span per request
		o.Now = clock.Now
	})
	p := make([]byte, 900)
	for _, off := range []int64{0, 900} { // span 0, then across into span 1
		if n, err := m.FetchAt(t.Context(), p, off); n != len(p) || err != nil || !bytes.Equal(p, l.data[off:off+900]) {
			t.Fatalf("FetchAt(%d) = %d, %v", off, n, err)
		}
	}
	m.c.wg.Wait()
	// The run is 1800 bytes long at the second read: spans 2 and 3
	// (up to byte 3600) come ahead.
	if got := f.fetchesPerSpan(l.table); !slices.Equal(got, []int{1, 1, 1, 1, 0}) {
		t.Errorf("fetches per span = %v, want spans 0-3 once", got)
	}
}

// demandCount counts demands in progress.
type demandCount struct {
	mu      sync.Mutex
	n, peak int
}

func (d *demandCount) BeginDemand() { d.mu.Lock(); d.n++; d.peak = max(d.peak, d.n); d.mu.Unlock() }
func (d *demandCount) EndDemand()   { d.mu.Lock(); d.n--; d.mu.Unlock() }
func (d *demandCount) get() (n, peak int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n, d.peak
}

// TestReadAheadIsDemand: a read-ahead fetch is a demand while it runs (the
// background walk yields to it), and ends being one when it is done.
func TestReadAheadIsDemand(t *testing.T) {
	// In a bubble, synctest.Wait tells when the read has counted itself:
	// it does so after it started its fetch and the fetches ahead.
	synctest.Test(t, func(t *testing.T) { readAheadIsDemand(t) })
}

func readAheadIsDemand(t *testing.T) {
	l := buildLayer(t, 36, []int{1000, 1000, 1000, 1000}, false)
	f := &fakeFetcher{blob: l.blob}
	d := &demandCount{}
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) {
		o.ReadAhead = 1 << 20
		o.ReadAheadRequest = 1
		o.Demand = d
	})
	p := make([]byte, 900)
	if n, err := m.FetchAt(t.Context(), p, 0); n != len(p) || err != nil {
		t.Fatal(n, err)
	}
	if n, _ := d.get(); n != 0 {
		t.Fatalf("demands after a read = %d, want 0", n)
	}
	gate := make(chan struct{})
	started := make(chan struct{}, 8)
	f.set(func(f *fakeFetcher) { f.gate, f.started = gate, started })
	done := make(chan error, 1)
	go func() { // crosses into span 1: a demand fetch of it, spans 2-3 ahead
		_, err := m.FetchAt(t.Context(), p, 900)
		done <- err
	}()
	for range 3 {
		<-started
	}
	synctest.Wait() // the read waits for its span, the fetches for the gate
	if n, _ := d.get(); n != 3 {
		t.Errorf("demands while the read and its read-ahead wait = %d, want 3", n)
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	m.c.wg.Wait()
	if n, peak := d.get(); n != 0 || peak != 3 {
		t.Errorf("demands after the fetches = %d (peak %d), want 0 (peak 3)", n, peak)
	}
	if got := f.fetchesPerSpan(l.table); !slices.Equal(got, []int{1, 1, 1, 1}) {
		t.Errorf("fetches per span = %v, want each span once", got)
	}
}

// TestReadAheadNotSplit: a demand fetch is split into parts (SplitRequest),
// a read-ahead fetch is one request per ReadAheadRequest.
func TestReadAheadNotSplit(t *testing.T) {
	l := buildLayer(t, 37, []int{4000, 4000, 4000, 4000}, false)
	f := &fakeFetcher{blob: l.blob}
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) {
		o.ReadAhead = 1 << 20
		o.ReadAheadRequest = 1
		o.SplitRequest = 1000
	})
	p := make([]byte, 2000)
	for _, off := range []int64{0, 2000, 4000} { // span 0, then into span 1: span 2 ahead
		if n, err := m.FetchAt(t.Context(), p, off); n != len(p) || err != nil {
			t.Fatalf("FetchAt(%d) = %d, %v", off, n, err)
		}
	}
	m.c.wg.Wait()
	if got := f.fetchesPerSpan(l.table); !slices.Equal(got, []int{0, 0, 1, 0}) {
		t.Errorf("whole-span requests per span = %v, want span 2 (ahead) in one request, 0-1 (demand) in parts", got)
	}
	parts := func(i int) int {
		n := l.table.Spans[i].CompressedEnd - l.table.Spans[i].CompressedStart
		return int(min(4, (n+999)/1000))
	}
	if got, want := f.requests(), parts(0)+parts(1)+1; got != want || want < 5 {
		t.Errorf("requests = %d, want %d (spans 0 and 1 in parts, span 2 whole)", got, want)
	}
}
