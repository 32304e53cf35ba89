package span

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

// TestKeepCompressed: with KeepCompressed, a read's fetch keeps each span's
// verified compressed bytes for the background walk until DropCompressed;
// without it nothing is kept.
func TestKeepCompressed(t *testing.T) {
	l := buildLayer(t, 11, []int{4096, 5000, 3000}, true)
	ctx := context.Background()
	for _, keep := range []bool{true, false} {
		m := newManager(t, l, &fakeFetcher{blob: l.blob}, cache.NewMemory(), func(o *Options) { o.KeepCompressed = keep })
		buf := make([]byte, 100)
		if _, err := m.FetchAt(ctx, buf, 5000); err != nil { // span 1
			t.Fatal(err)
		}
		s := l.table.Spans[1]
		got, ok := m.Loader().Compressed(ctx, 1)
		if ok != keep || (keep && !bytes.Equal(got, l.blob[s.CompressedStart:s.CompressedEnd])) {
			t.Errorf("keep=%v: Compressed(1) = %d bytes, %v", keep, len(got), ok)
		}
		if _, ok := m.Loader().Compressed(ctx, 0); ok {
			t.Errorf("keep=%v: span 0 was never fetched but has a compressed copy", keep)
		}
		if !m.Loader().Has(ctx, 1) || m.Loader().Has(ctx, 2) {
			t.Errorf("keep=%v: Has(1)=%v Has(2)=%v, want true false", keep, m.Loader().Has(ctx, 1), m.Loader().Has(ctx, 2))
		}
		m.Loader().DropCompressed(ctx)
		if _, ok := m.Loader().Compressed(ctx, 1); ok {
			t.Errorf("keep=%v: compressed copy survives DropCompressed", keep)
		}
	}
}

// TestCompressedWaitsForFetch: the compressed copy of a span a read is
// still fetching is waited for, not reported missing (the walk would fetch
// the span again to hash it).
func TestCompressedWaitsForFetch(t *testing.T) {
	// In a bubble, synctest.Wait tells when Compressed is blocked.
	synctest.Test(t, func(t *testing.T) {
		l := buildLayer(t, 12, []int{4096, 5000, 3000}, false)
		f := &fakeFetcher{blob: l.blob}
		gate := make(chan struct{})
		f.set(func(f *fakeFetcher) { f.gate = gate })
		begun := make(beginSignal, 1)
		m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.KeepCompressed = true; o.Demand = begun })
		read := make(chan error, 1)
		go func() {
			_, err := m.FetchAt(context.Background(), make([]byte, 100), 5000) // span 1
			read <- err
		}()
		<-begun // the read's fetch of span 1 is in flight
		type res struct {
			b  []byte
			ok bool
		}
		got := make(chan res, 1)
		go func() {
			b, ok := m.Loader().Compressed(context.Background(), 1)
			got <- res{b, ok}
		}()
		synctest.Wait()
		select {
		case r := <-got:
			t.Fatalf("Compressed(1) returned (%d bytes, %v) while the span was being fetched", len(r.b), r.ok)
		default:
		}
		close(gate)
		r := <-got
		s := l.table.Spans[1]
		if !r.ok || !bytes.Equal(r.b, l.blob[s.CompressedStart:s.CompressedEnd]) {
			t.Errorf("Compressed(1) after the fetch = %d bytes, %v", len(r.b), r.ok)
		}
		if err := <-read; err != nil {
			t.Fatal(err)
		}
		// A canceled wait reports nothing kept.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		gate2 := make(chan struct{})
		defer close(gate2)
		f.set(func(f *fakeFetcher) { f.gate = gate2 })
		go func() { _, _ = m.FetchAt(context.Background(), make([]byte, 100), 10000) }() // span 2
		<-begun
		if _, ok := m.Loader().Compressed(ctx, 2); ok {
			t.Error("Compressed(2) with a canceled ctx while span 2 is fetched = ok")
		}
	})
}

// slowZCache blocks the Put of compressed copies until gate is closed.
type slowZCache struct {
	*cache.Memory
	gate chan struct{}
}

func (s slowZCache) Put(key string, data []byte) error {
	if strings.Contains(key, "/z/") {
		<-s.gate
	}
	return s.Memory.Put(key, data)
}

// TestReadersBeforeCompressedCopy: a read gets its span without waiting for
// the compressed copy to be written; the walk's Compressed waits for it.
func TestReadersBeforeCompressedCopy(t *testing.T) {
	// In a bubble, synctest.Wait tells when Compressed is blocked.
	synctest.Test(t, func(t *testing.T) {
		l := buildLayer(t, 13, []int{4096, 5000, 3000}, false)
		c := slowZCache{cache.NewMemory(), make(chan struct{})}
		m := newManager(t, l, &fakeFetcher{blob: l.blob}, c, func(o *Options) { o.KeepCompressed = true })
		p := make([]byte, 100)
		if n, err := m.FetchAt(context.Background(), p, 5000); n != len(p) || err != nil || !bytes.Equal(p, l.data[5000:5100]) {
			t.Fatalf("FetchAt = %d, %v while the compressed copy is not written", n, err)
		}
		type res struct {
			b  []byte
			ok bool
		}
		got := make(chan res, 1)
		go func() {
			b, ok := m.Loader().Compressed(context.Background(), 1)
			got <- res{b, ok}
		}()
		synctest.Wait()
		select {
		case r := <-got:
			t.Fatalf("Compressed(1) returned (%d bytes, %v) before the copy was written", len(r.b), r.ok)
		default:
		}
		close(c.gate)
		r := <-got
		s := l.table.Spans[1]
		if !r.ok || !bytes.Equal(r.b, l.blob[s.CompressedStart:s.CompressedEnd]) {
			t.Errorf("Compressed(1) = %d bytes, %v", len(r.b), r.ok)
		}
	})
}
