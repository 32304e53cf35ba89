package span

import (
	"math/rand/v2"
	"testing"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

// benchLayer is 32 spans of 256 KiB.
func benchLayer(b *testing.B) testLayer {
	sizes := make([]int, 32)
	for i := range sizes {
		sizes[i] = 256 << 10
	}
	return buildLayer(b, 42, sizes, true)
}

// BenchmarkFetchAtWarm reads random 4 KiB pieces of a fully cached layer.
func BenchmarkFetchAtWarm(b *testing.B) {
	l := benchLayer(b)
	m := newManager(b, l, &fakeFetcher{blob: l.blob}, cache.NewMemory(), nil)
	readAll(b, m, l)
	rng := rand.New(rand.NewPCG(1, 1))
	p := make([]byte, 4096)
	b.SetBytes(int64(len(p)))
	b.ResetTimer()
	for b.Loop() {
		off := rng.Int64N(l.table.UncompressedSize - int64(len(p)))
		if _, err := m.FetchAt(b.Context(), p, off); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFetchAtCold reads random 4 KiB pieces, each from a fresh Manager
// and cache: fetch, verify, inflate and cache one or two spans.
func BenchmarkFetchAtCold(b *testing.B) {
	l := benchLayer(b)
	f := &fakeFetcher{blob: l.blob}
	rng := rand.New(rand.NewPCG(2, 2))
	p := make([]byte, 4096)
	b.SetBytes(int64(len(p)))
	b.ResetTimer()
	for b.Loop() {
		m, err := New(Options{Table: l.table, Fetcher: f, Cache: cache.NewMemory(), Decompressor: flateDecompressor{}, CacheKey: testKey})
		if err != nil {
			b.Fatal(err)
		}
		off := rng.Int64N(l.table.UncompressedSize - int64(len(p)))
		if _, err := m.FetchAt(b.Context(), p, off); err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
}
