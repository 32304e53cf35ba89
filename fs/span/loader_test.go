package span

import (
	"bytes"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

// TestLoad: spans loaded from caller-fetched bytes serve reads without
// registry requests; corrupt bytes are refused span by span.
func TestLoad(t *testing.T) {
	l := buildLayer(t, 21, []int{1000, 2000, 3000, 500}, true)
	f := &fakeFetcher{blob: l.blob}
	m := newManager(t, l, f, cache.NewMemory(), nil)
	bad := slices.Clone(l.blob)
	bad[l.table.Spans[2].CompressedStart+3] ^= 0xff
	// The first two spans from the blob's start (bytes before span 0 are allowed).
	if err := m.Loader().Load(t.Context(), 0, 1, l.blob[:l.table.Spans[1].CompressedEnd], 0); err != nil {
		t.Fatal(err)
	}
	base := l.table.Spans[2].CompressedStart
	err := m.Loader().Load(t.Context(), 2, 3, bad[base:], base)
	if !errors.Is(err, ErrVerification) {
		t.Fatalf("Load of a corrupt span: %v, want a verification error", err)
	}
	if spans, _ := m.Cached(); spans != 3 {
		t.Errorf("cached spans = %d, want 3", spans)
	}
	p := make([]byte, 3000)
	if n, err := m.FetchAt(t.Context(), p, 0); n != len(p) || err != nil || !bytes.Equal(p, l.data[:3000]) {
		t.Fatalf("FetchAt = %d, %v", n, err)
	}
	if got := f.requests(); got != 0 {
		t.Errorf("requests = %d after Load, want 0", got)
	}
	if err := m.Loader().Load(t.Context(), 1, 2, l.blob[:10], 0); err == nil {
		t.Error("Load with bytes not covering the spans succeeded")
	}
}

type countingObserver struct {
	mu           sync.Mutex
	reads        int
	hits, misses int
	failures     map[string]int
}

func (o *countingObserver) ObserveRead(_ time.Duration, hits, misses int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reads++
	o.hits += hits
	o.misses += misses
}

func (o *countingObserver) Failure(kind string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failures == nil {
		o.failures = map[string]int{}
	}
	o.failures[kind]++
}

type countingDemand struct {
	mu             sync.Mutex
	active, begins int
}

func (d *countingDemand) BeginDemand() { d.mu.Lock(); d.active++; d.begins++; d.mu.Unlock() }
func (d *countingDemand) EndDemand()   { d.mu.Lock(); d.active--; d.mu.Unlock() }

// TestObserverAndDemand: misses are demand fetches, counted and reported;
// cached reads are hits and no demand.
func TestObserverAndDemand(t *testing.T) {
	l := buildLayer(t, 22, []int{1000, 1000, 1000}, true)
	f := &fakeFetcher{blob: l.blob}
	o, d := &countingObserver{}, &countingDemand{}
	m := newManager(t, l, f, cache.NewMemory(), func(opts *Options) { opts.Observer, opts.Demand = o, d })
	p := make([]byte, 1500)
	for range 2 {
		if _, err := m.FetchAt(t.Context(), p, 0); err != nil {
			t.Fatal(err)
		}
	}
	f.set(func(f *fakeFetcher) { f.corrupt = true })
	if _, err := m.FetchAt(t.Context(), p, 2000); !errors.Is(err, ErrVerification) {
		t.Fatalf("corrupt read: %v", err)
	}
	if o.reads != 3 || o.hits != 2 || o.misses != 3 || o.failures["verification"] != 1 {
		t.Errorf("observer: reads %d hits %d misses %d failures %v", o.reads, o.hits, o.misses, o.failures)
	}
	if d.begins != 2 || d.active != 0 {
		t.Errorf("demand: %d begins, %d still active; want 2, 0", d.begins, d.active)
	}
}

// preemptingDemand is a countingDemand that also counts preemptions.
type preemptingDemand struct {
	countingDemand
	preempts int
}

func (d *preemptingDemand) Preempt() { d.mu.Lock(); d.preempts++; d.mu.Unlock() }

// TestFetchPreempts: a read that starts a fetch preempts lower-priority
// fetches (Preempter); a cached read, or one that joins a fetch already
// started, does not.
func TestFetchPreempts(t *testing.T) {
	l := buildLayer(t, 23, []int{1000, 1000, 1000}, true)
	f := &fakeFetcher{blob: l.blob}
	d := &preemptingDemand{}
	m := newManager(t, l, f, cache.NewMemory(), func(opts *Options) { opts.Demand = d })
	p := make([]byte, 1500)
	for range 2 {
		if _, err := m.FetchAt(t.Context(), p, 0); err != nil {
			t.Fatal(err)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.preempts != 1 {
		t.Errorf("%d preemptions, want 1 (the first read's fetch)", d.preempts)
	}
}

// TestReadOfReservedSpanPreempts: a read that waits for a span the walk
// reserved preempts the walk's other chunks, and Waited then tells the
// walk to spare this one and the next.
func TestReadOfReservedSpanPreempts(t *testing.T) {
	// In a bubble, synctest.Wait tells when the read waits.
	synctest.Test(t, func(t *testing.T) {
		l := buildLayer(t, 24, []int{1000, 1000, 1000}, true)
		f := &fakeFetcher{blob: l.blob}
		d := &preemptingDemand{}
		m := newManager(t, l, f, cache.NewMemory(), func(opts *Options) { opts.Demand = d })
		ld := m.Loader()
		if got := ld.Reserve(t.Context(), 1, 1); got != 1 {
			t.Fatalf("Reserve: %d", got)
		}
		if ld.Waited(0, 2) {
			t.Fatal("Waited before any read")
		}
		done := make(chan error, 1)
		go func() {
			p := make([]byte, 100)
			_, err := m.FetchAt(t.Context(), p, l.table.Spans[1].UncompressedStart)
			done <- err
		}()
		synctest.Wait() // the read waits for the walk's chunk
		if !ld.Waited(1, 1) {
			t.Fatal("the read does not wait for the reserved span")
		}
		d.mu.Lock()
		preempts := d.preempts
		d.mu.Unlock()
		if preempts != 1 {
			t.Errorf("%d preemptions, want 1", preempts)
		}
		if ld.Waited(0, 0) {
			t.Error("Waited for a span nobody waits for")
		}
		// The walk's stream finishes span 1 only with the first bytes of
		// the next chunk: that chunk is spared too.
		if !ld.Waited(2, 2) {
			t.Error("the chunk after the span a read waits for is not spared")
		}
		base := l.table.Spans[1].CompressedStart
		if err := ld.Load(t.Context(), 1, 1, l.blob[base:l.table.Spans[1].CompressedEnd], base); err != nil {
			t.Fatal(err)
		}
		ld.Release(1, 1)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if f.requests() != 0 {
			t.Errorf("%d registry requests, want 0 (the read waited for the walk)", f.requests())
		}
	})
}

// TestReadAheadOfReservedSpanSpares: a read-ahead that wants a span the
// walk is fetching leaves it to the walk, and the preemption its other
// fetches start spares that chunk (Waited), so its bytes are not thrown
// away and fetched again.
func TestReadAheadOfReservedSpanSpares(t *testing.T) {
	l := buildLayer(t, 25, []int{1000, 1000, 1000, 1000, 1000}, true)
	f := &fakeFetcher{blob: l.blob}
	d := &preemptingDemand{}
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) {
		o.Demand = d
		o.ReadAhead = 1 << 20
		o.ReadAheadRequest = 1 // one span per request
	})
	ld := m.Loader()
	p := make([]byte, 400)
	if _, err := m.FetchAt(t.Context(), p, 0); err != nil { // span 0: a demand fetch
		t.Fatal(err)
	}
	if got := ld.Reserve(t.Context(), 2, 2); got != 2 {
		t.Fatalf("Reserve: %d", got)
	}
	// Reading on into span 1 starts a run: the spans after it come ahead.
	for off := int64(400); off < 2000; off += 400 {
		if _, err := m.FetchAt(t.Context(), p, off); err != nil {
			t.Fatal(err)
		}
	}
	m.c.wg.Wait()
	d.mu.Lock()
	preempts := d.preempts
	d.mu.Unlock()
	if preempts < 2 {
		t.Fatalf("%d preemptions, want the read-ahead's too", preempts)
	}
	if !ld.Waited(2, 2) {
		t.Error("the walk's chunk of span 2, which the read-ahead wants, is not spared")
	}
	if got := f.fetchesPerSpan(l.table); got[2] != 0 || got[3] != 1 {
		t.Errorf("fetches per span = %v, want span 2 left to the walk and span 3 fetched ahead", got)
	}
	base := l.table.Spans[2].CompressedStart
	if err := ld.Load(t.Context(), 2, 2, l.blob[base:l.table.Spans[2].CompressedEnd], base); err != nil {
		t.Fatal(err)
	}
	ld.Release(2, 2)
	if n, _ := m.Cached(); n != 4 { // spans 0-3: span 4 is beyond the window
		t.Errorf("cached spans = %d, want 4", n)
	}
}
