package span

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

// gatedDecompressor counts the uncompressed bytes inside Decompress, keeps
// the peak, reports each entry and holds every decompression until gate is
// closed.
type gatedDecompressor struct {
	table   Table
	inside  *atomic.Int64
	peak    *atomic.Int64
	entered chan int
	gate    chan struct{}
}

func (d gatedDecompressor) Decompress(compressed []byte, i int) ([]byte, error) {
	n := d.table.Spans[i].Len()
	now := d.inside.Add(n)
	defer d.inside.Add(-n)
	for p := d.peak.Load(); now > p && !d.peak.CompareAndSwap(p, now); p = d.peak.Load() {
	}
	d.entered <- i
	<-d.gate
	return flateDecompressor{}.Decompress(compressed, i)
}

// ztocKey is the cache key of the test layer served with zTOC z.
func ztocKey(z string) string {
	return testKey + "/" + digest.FromString("ztoc "+z).String()
}

// TestDecompressLimitSharedByManagers: four layers' managers share one
// limit of three spans; twelve concurrent span reads never decompress more
// than the limit at once, and the limit lets exactly three in.
func TestDecompressLimitSharedByManagers(t *testing.T) {
	const spanLen, layers, perLayer = 10000, 4, 3
	limit := NewDecompressLimit(3 * spanLen)
	var inside, peak atomic.Int64
	gate, entered := make(chan struct{}), make(chan int, layers*perLayer)
	var open sync.Once
	release := func() { open.Do(func() { close(gate) }) }
	shared := cache.NewMemory()
	var ls []testLayer
	var ms []*Manager
	for k := range layers {
		l := buildLayer(t, uint64(40+k), []int{spanLen, spanLen, spanLen}, true)
		dec := gatedDecompressor{table: l.table, inside: &inside, peak: &peak, entered: entered, gate: gate}
		ls = append(ls, l)
		ms = append(ms, newManager(t, l, &fakeFetcher{blob: l.blob}, shared, func(o *Options) {
			o.Decompressor, o.Limit, o.CacheKey = dec, limit, ztocKey(fmt.Sprint(k))
		}))
	}
	t.Cleanup(release) // before the Managers close: a failure must not leave fetches blocked
	var wg sync.WaitGroup
	errs := make(chan error, layers*perLayer)
	for k, m := range ms {
		for i := range perLayer {
			wg.Go(func() {
				p := make([]byte, spanLen)
				if _, err := m.FetchAt(t.Context(), p, int64(i*spanLen)); err != nil {
					errs <- fmt.Errorf("layer %d span %d: %w", k, i, err)
				} else if !bytes.Equal(p, ls[k].data[i*spanLen:(i+1)*spanLen]) {
					errs <- fmt.Errorf("layer %d span %d: wrong bytes", k, i)
				}
			})
		}
	}
	for range 3 {
		<-entered
	}
	// Three spans hold the whole limit: nothing more can be taken.
	if limit.sem.TryAcquire(1) {
		t.Fatal("three spans in decompression, yet the shared limit has room")
	}
	if got := inside.Load(); got != 3*spanLen {
		t.Fatalf("%d bytes in decompression, want %d", got, 3*spanLen)
	}
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := peak.Load(); got > limit.Max() {
		t.Fatalf("peak %d bytes in decompression, limit %d", got, limit.Max())
	}
	if !limit.sem.TryAcquire(limit.Max()) {
		t.Fatal("limit not fully released after the reads")
	}
}

// TestDecompressLimitRefusesLargeSpan: a span longer than the limit fails
// with ErrTooLarge, unfetched; its neighbours are served.
func TestDecompressLimitRefusesLargeSpan(t *testing.T) {
	l := buildLayer(t, 50, []int{5000, 20000, 5000}, true)
	f := &fakeFetcher{blob: l.blob}
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.Limit = NewDecompressLimit(10000) })
	p := make([]byte, 100)
	_, err := m.FetchAt(t.Context(), p, 6000)
	if !errors.Is(err, ErrTooLarge) || !errdefs.IsResourceExhausted(err) {
		t.Fatalf("read of a span over the limit: %v", err)
	}
	if got := f.fetchesPerSpan(l.table)[1]; got != 0 {
		t.Fatalf("span over the limit fetched %d times", got)
	}
	for _, off := range []int64{0, 25000} {
		if _, err := m.FetchAt(t.Context(), p, off); err != nil || !bytes.Equal(p, l.data[off:off+100]) {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	all := make([]byte, len(l.data))
	if n, err := m.FetchAt(t.Context(), all, 0); !errors.Is(err, ErrTooLarge) || n != 5000 {
		t.Fatalf("read across it: %d, %v", n, err)
	}
	s := l.table.Spans[1]
	if err := m.Loader().Load(t.Context(), 1, 1, l.blob[s.CompressedStart:s.CompressedEnd], s.CompressedStart); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Load of a span over the limit: %v", err)
	}
}

// TestDecompressLimitWaitHonoursContext: a decompression waiting for the
// limit gives up when its context ends, and proceeds once there is room.
func TestDecompressLimitWaitHonoursContext(t *testing.T) {
	l := buildLayer(t, 51, []int{5000}, false)
	limit := NewDecompressLimit(8000)
	m := newManager(t, l, &fakeFetcher{blob: l.blob}, cache.NewMemory(), func(o *Options) { o.Limit = limit })
	if err := limit.sem.Acquire(t.Context(), 4000); err != nil { // someone else decompresses
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Loader().Load(ctx, 0, 0, l.blob, 0) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Load waiting for the limit: %v", err)
	}
	limit.sem.Release(4000)
	if err := m.Loader().Load(t.Context(), 0, 0, l.blob, 0); err != nil {
		t.Fatalf("Load with room: %v", err)
	}
	p := make([]byte, 5000)
	if _, err := m.FetchAt(t.Context(), p, 0); err != nil || !bytes.Equal(p, l.data) {
		t.Fatalf("read after Load: %v", err)
	}
}

// alteredWindows stands for the decompressor of a zTOC whose checkpoint
// windows were altered: the same verified compressed bytes inflate to
// other data of the same length.
type alteredWindows struct{}

func (alteredWindows) Decompress(compressed []byte, i int) ([]byte, error) {
	out, err := flateDecompressor{}.Decompress(compressed, i)
	for k := range out {
		out[k] ^= 0x5a
	}
	return out, err
}

// TestZTOCsOfOneLayerNeverShareSpans: two zTOCs of one layer, one with
// altered windows, share a cache; neither reads the spans the other
// decompressed, before or after a restart (new Managers).
func TestZTOCsOfOneLayerNeverShareSpans(t *testing.T) {
	l := buildLayer(t, 52, []int{4000, 4000, 4000}, true)
	want := map[string][]byte{"honest": l.data, "altered": make([]byte, len(l.data))}
	for k, b := range l.data {
		want["altered"][k] = b ^ 0x5a
	}
	decs := map[string]Decompressor{"honest": flateDecompressor{}, "altered": alteredWindows{}}
	shared := cache.NewMemory()
	read := func(z string) (int, []byte) {
		t.Helper()
		f := &fakeFetcher{blob: l.blob}
		m := newManager(t, l, f, shared, func(o *Options) { o.Decompressor, o.CacheKey = decs[z], ztocKey(z) })
		p := make([]byte, len(l.data))
		if _, err := m.FetchAt(t.Context(), p, 0); err != nil {
			t.Fatalf("read with the %s zTOC: %v", z, err)
		}
		m.Close()
		return f.requests(), p
	}
	for round, order := range [][]string{{"altered", "honest"}, {"honest", "altered"}} {
		for _, z := range order {
			n, got := read(z)
			if !bytes.Equal(got, want[z]) {
				t.Fatalf("round %d: the %s zTOC read the other zTOC's spans", round, z)
			}
			if round == 0 && n == 0 {
				t.Fatalf("the %s zTOC fetched nothing: it used spans it did not decompress", z)
			}
			if round == 1 && n != 0 {
				t.Fatalf("the %s zTOC refetched its own cached spans (%d requests)", z, n)
			}
		}
	}
}
