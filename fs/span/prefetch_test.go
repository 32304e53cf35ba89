package span

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

// gatedFetcher serves the blob, holding every request until release lets
// it go, and records the most requests it had in flight at once.
type gatedFetcher struct {
	blob    []byte
	started chan [2]int64 // each request's range as it starts
	release chan struct{} // one receive lets one request finish

	mu                 sync.Mutex
	inflight, peak, nr int
}

func newGatedFetcher(blob []byte) *gatedFetcher {
	return &gatedFetcher{blob: blob, started: make(chan [2]int64, 64), release: make(chan struct{})}
}

func (f *gatedFetcher) FetchAt(ctx context.Context, p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.inflight++
	f.nr++
	f.peak = max(f.peak, f.inflight)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inflight--
		f.mu.Unlock()
	}()
	f.started <- [2]int64{off, off + int64(len(p))}
	select {
	case <-f.release:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return copy(p, f.blob[off:]), nil
}

func (f *gatedFetcher) requests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nr
}

func (f *gatedFetcher) stats() (peak, requests int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.peak, f.nr
}

// TestPrefetchCoalescesAndBounds: consecutive listed spans go in one
// request (split by MaxCoalesce, never across a gap), at most the slots'
// bound of requests are in flight at once, and every listed span is cached
// afterwards.
func TestPrefetchCoalescesAndBounds(t *testing.T) {
	sizes := make([]int, 16)
	for i := range sizes {
		sizes[i] = 3000
	}
	l := buildLayer(t, 7, sizes, true)
	f := newGatedFetcher(l.blob)
	s := l.table.Spans
	// Room for two spans per request.
	maxC := s[2].CompressedEnd - s[0].CompressedStart - 1
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.MaxCoalesce = maxC; o.SplitRequest = 100 })
	idx := []int{0, 1, 2, 5, 6, 9, 12, 13, 15}
	want := [][2]int{{0, 1}, {2, 2}, {5, 6}, {9, 9}, {12, 13}, {15, 15}}
	slots := NewPrefetchSlots(2)
	waited := make(chan struct{}, 1)
	slots.waiting = func() { waited <- struct{}{} }
	type out struct {
		res PrefetchResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := m.Prefetch(t.Context(), idx, slots)
		done <- out{res, err}
	}()
	// Two requests start; the third waits for a slot, and starts only
	// once one of them is done.
	var got [][2]int64
	for len(got) < len(want) {
		got = append(got, <-f.started)
		if len(got) < 2 {
			continue
		}
		if len(got) < len(want) {
			select {
			case <-waited:
			case r := <-f.started:
				t.Fatalf("request [%d, %d) started with 2 in flight and a bound of 2", r[0], r[1])
			}
		}
		f.release <- struct{}{}
	}
	f.release <- struct{}{}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	slices.SortFunc(got, func(a, b [2]int64) int { return int(a[0] - b[0]) })
	for k, w := range want {
		if g := got[k]; g[0] != s[w[0]].CompressedStart || g[1] != s[w[1]].CompressedEnd {
			t.Errorf("request %d = [%d, %d), want spans %d-%d [%d, %d)", k, g[0], g[1], w[0], w[1], s[w[0]].CompressedStart, s[w[1]].CompressedEnd)
		}
	}
	if peak, n := f.stats(); peak > 2 || n != len(want) {
		t.Errorf("peak requests in flight = %d (bound 2), requests = %d, want %d", peak, n, len(want))
	}
	if r.res.Spans != len(idx) || r.res.Requests != len(want) || r.res.Failed != 0 || r.res.Joined != 0 {
		t.Errorf("result = %+v", r.res)
	}
	var wantBytes int64
	for _, i := range idx {
		wantBytes += s[i].CompressedEnd - s[i].CompressedStart
	}
	if r.res.Bytes != wantBytes {
		t.Errorf("bytes = %d, want %d", r.res.Bytes, wantBytes)
	}
	if cached, _ := m.Cached(); cached != len(idx) {
		t.Errorf("cached spans = %d, want %d", cached, len(idx))
	}
	// A second prefetch of the same spans fetches nothing.
	res, err := m.Prefetch(t.Context(), idx, slots)
	if err != nil || res.Spans != 0 || res.Requests != 0 {
		t.Errorf("second prefetch = %+v, %v; want nothing fetched", res, err)
	}
}

// TestPrefetchUnbounded: without slots every request starts at once.
func TestPrefetchUnbounded(t *testing.T) {
	l := buildLayer(t, 8, []int{100, 100, 100, 100, 100}, false)
	f := newGatedFetcher(l.blob)
	m := newManager(t, l, f, cache.NewMemory(), nil)
	done := make(chan error, 1)
	go func() {
		_, err := m.Prefetch(t.Context(), []int{0, 2, 4}, nil)
		done <- err
	}()
	for range 3 {
		<-f.started
	}
	if peak, _ := f.stats(); peak != 3 {
		t.Errorf("peak in flight = %d, want 3", peak)
	}
	for range 3 {
		f.release <- struct{}{}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// signalDemand tells when a read starts waiting for the registry: it has
// planned its spans and joined (or started) their fetches.
type signalDemand struct{ begun chan struct{} }

func (d signalDemand) BeginDemand() { d.begun <- struct{}{} }
func (d signalDemand) EndDemand()   {}

// TestPrefetchJoinsReads: a read of a span a prefetch is fetching waits for
// that fetch, and a prefetch of a span a read is fetching waits for the
// read's; each span is requested once.
func TestPrefetchJoinsReads(t *testing.T) {
	l := buildLayer(t, 9, []int{4000, 4000, 4000, 4000}, true)
	f := newGatedFetcher(l.blob)
	d := signalDemand{begun: make(chan struct{}, 4)}
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.Demand = d })
	s := l.table.Spans

	// Prefetch first, then a read of span 1 joins it.
	pre := make(chan PrefetchResult, 1)
	go func() {
		res, err := m.Prefetch(t.Context(), []int{0, 1}, nil)
		if err != nil {
			t.Error(err)
		}
		pre <- res
	}()
	<-f.started
	read := make(chan error, 1)
	p := make([]byte, 100)
	go func() {
		_, err := m.FetchAt(t.Context(), p, s[1].UncompressedStart+10)
		read <- err
	}()
	<-d.begun // the read waits, on the prefetch's fetch
	f.release <- struct{}{}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, l.data[s[1].UncompressedStart+10:][:100]) {
		t.Error("read joined to a prefetch returned wrong bytes")
	}
	if res := <-pre; res.Spans != 2 || res.Requests != 1 {
		t.Errorf("prefetch = %+v, want 2 spans in 1 request", res)
	}

	// A read first, then a prefetch of the same span joins it.
	go func() {
		_, err := m.FetchAt(t.Context(), p, s[2].UncompressedStart)
		read <- err
	}()
	<-f.started
	go func() {
		res, err := m.Prefetch(t.Context(), []int{2, 3}, nil)
		if err != nil {
			t.Error(err)
		}
		pre <- res
	}()
	<-f.started // the prefetch's own request, for span 3 only: it has joined span 2's
	f.release <- struct{}{}
	f.release <- struct{}{}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if res := <-pre; res.Spans != 1 || res.Joined != 1 {
		t.Errorf("prefetch = %+v, want 1 fetched and 1 joined", res)
	}
	if _, n := f.stats(); n != 3 {
		t.Errorf("requests = %d, want 3 (each span once)", n)
	}
}

// TestPrefetchCancel: canceling the prefetch's context (the layer is
// unmounted) ends Prefetch while its request hangs, frees its slot once the
// manager is closed, and starts no further requests.
func TestPrefetchCancel(t *testing.T) {
	l := buildLayer(t, 10, []int{100, 100, 100, 100}, false)
	f := newGatedFetcher(l.blob)
	m := newManager(t, l, f, cache.NewMemory(), nil)
	slots := NewPrefetchSlots(1)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := m.Prefetch(ctx, []int{0, 2}, slots)
		done <- err
	}()
	<-f.started
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Prefetch after cancel = %v, want context.Canceled", err)
	}
	m.Close() // cancels the hanging fetch and waits for it
	if _, n := f.stats(); n != 1 {
		t.Errorf("requests = %d, want 1 (none after the cancel)", n)
	}
	if n := len(slots.ch); n != 0 {
		t.Errorf("%d slots still held after the manager closed", n)
	}
	if _, err := m.Prefetch(t.Context(), []int{1}, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Prefetch after Close = %v, want ErrClosed", err)
	}
}

// TestPrefetchHostileList: lists out of range, descending or with
// duplicates are refused before anything is fetched.
func TestPrefetchHostileList(t *testing.T) {
	l := buildLayer(t, 11, []int{100, 100, 100}, false)
	f := &fakeFetcher{blob: l.blob}
	m := newManager(t, l, f, cache.NewMemory(), nil)
	for _, idx := range [][]int{{-1}, {3}, {1, 0}, {1, 1}, {0, 1 << 40}} {
		if _, err := m.Prefetch(t.Context(), idx, nil); !errors.Is(err, ErrPrefetchSpans) {
			t.Errorf("Prefetch(%v) = %v, want ErrPrefetchSpans", idx, err)
		}
	}
	if f.requests() != 0 {
		t.Errorf("requests = %d, want 0", f.requests())
	}
}

// TestPrefetchRequestsAndWindow: with a read's MaxCoalesce (the default),
// Prefetch still asks for at most its request size at once (a run of
// listed spans becomes several requests, each ended where Table.Run ends
// it), starts them in the list's order, and has at most its window of
// bytes in flight without any slots.
func TestPrefetchRequestsAndWindow(t *testing.T) {
	sizes := make([]int, 12)
	for i := range sizes {
		sizes[i] = 3000
	}
	l := buildLayer(t, 12, sizes, false)
	f := newGatedFetcher(l.blob)
	s := l.table.Spans
	m := newManager(t, l, f, cache.NewMemory(), nil)
	// Room for two spans per request, two such requests at once.
	req := s[2].CompressedEnd - s[0].CompressedStart - 1
	m.prefetch = prefetchLimits{request: req, window: 2 * req}
	idx := []int{0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11}
	var want [][2]int64
	for k := 0; k < len(idx); {
		n := k + 1
		for n < len(idx) && idx[n] == idx[n-1]+1 {
			n++
		}
		for first := idx[k]; first <= idx[n-1]; {
			last := l.table.Run(first, idx[n-1], m.prefetch.request, CompressedBytes)
			want = append(want, [2]int64{s[first].CompressedStart, s[last].CompressedEnd})
			first = last + 1
		}
		k = n
	}
	if len(want) != 6 {
		t.Fatalf("test layer: %d requests expected, want 6: %v", len(want), want)
	}
	done := make(chan error, 1)
	go func() {
		_, err := m.Prefetch(t.Context(), idx, nil)
		done <- err
	}()
	// A bound on waiting for the code under test, so that a wrong number
	// of requests fails instead of hanging.
	next := func() [2]int64 {
		t.Helper()
		select {
		case r := <-f.started:
			return r
		case <-time.After(10 * time.Second):
			t.Fatalf("after %d requests, no other started; want %d", f.requests(), len(want))
			return [2]int64{}
		}
	}
	var got [][2]int64
	got = append(got, next(), next())
	for len(got) < len(want) {
		select {
		case r := <-f.started:
			t.Fatalf("request [%d, %d) started with a window of 2 full", r[0], r[1])
		default:
		}
		f.release <- struct{}{}
		got = append(got, next())
	}
	f.release <- struct{}{}
	f.release <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The first two start together, in either order; then one per release,
	// in the list's order.
	slices.SortFunc(got[:2], func(a, b [2]int64) int { return int(a[0] - b[0]) })
	if !slices.Equal(got, want) {
		t.Errorf("requests = %v, want %v", got, want)
	}
	if peak, n := f.stats(); peak > 2 || n != len(want) {
		t.Errorf("peak requests in flight = %d (window 2), requests = %d, want %d", peak, n, len(want))
	}
	if cached, _ := m.Cached(); cached != len(idx) {
		t.Errorf("cached spans = %d, want %d", cached, len(idx))
	}
}

// TestPrefetchDefaultLimits: a Manager's Prefetch uses PrefetchRequestBytes
// and PrefetchWindowBytes, requests below the reads' MaxCoalesce.
func TestPrefetchDefaultLimits(t *testing.T) {
	l := buildLayer(t, 13, []int{100, 100}, false)
	m := newManager(t, l, &fakeFetcher{blob: l.blob}, cache.NewMemory(), nil)
	if m.prefetch.request != PrefetchRequestBytes || m.prefetch.window != PrefetchWindowBytes || PrefetchRequestBytes >= DefaultMaxCoalesce {
		t.Errorf("prefetch limits = %+v, want %d and %d bytes (requests below %d)", m.prefetch, PrefetchRequestBytes, PrefetchWindowBytes, DefaultMaxCoalesce)
	}
}

// TestPrefetchWindowSmallRequests: requests far below the request size
// share the window by their bytes: they all start at once, with no round
// trip each to wait for.
func TestPrefetchWindowSmallRequests(t *testing.T) {
	l := buildLayer(t, 14, []int{3000, 3000, 3000, 3000, 3000, 3000, 3000, 3000, 3000}, false)
	f := newGatedFetcher(l.blob)
	m := newManager(t, l, f, cache.NewMemory(), nil)
	s := l.table.Spans
	// Each request may be as large as the whole layer, the window holds
	// two of those: five one-span requests (gaps between them) fit at once.
	m.prefetch = prefetchLimits{request: l.table.CompressedSize, window: 2 * l.table.CompressedSize}
	idx := []int{0, 2, 4, 6, 8}
	done := make(chan error, 1)
	go func() {
		_, err := m.Prefetch(t.Context(), idx, nil)
		done <- err
	}()
	var got [][2]int64
	for range idx {
		select {
		case r := <-f.started:
			got = append(got, r)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d one-span requests started without a release", len(got), len(idx))
		}
	}
	for range idx {
		f.release <- struct{}{}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b [2]int64) int { return int(a[0] - b[0]) })
	for k, i := range idx {
		if got[k] != [2]int64{s[i].CompressedStart, s[i].CompressedEnd} {
			t.Errorf("request %d = %v, want span %d", k, got[k], i)
		}
	}
}
