package span

import (
	"bytes"
	"compress/flate"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// discardCache keeps nothing, so that cached copies do not count in the
// heap measured.
type discardCache struct{}

func (discardCache) Get(key string) ([]byte, error) {
	return nil, fmt.Errorf("get %s: %w", key, errdefs.ErrNotFound)
}
func (discardCache) GetAt(key string, _ []byte, _ int64) (int, error) {
	return 0, fmt.Errorf("get %s: %w", key, errdefs.ErrNotFound)
}
func (discardCache) Put(string, []byte) error { return nil }
func (discardCache) Remove(string) error      { return nil }

// barrierDecompressor inflates a span into exactly its declared length,
// then holds it until wait decompressions hold theirs (the worst case: all
// the bound admits at once), measuring the heap at that moment.
type barrierDecompressor struct {
	table   Table
	wait    int64
	entered *atomic.Int64
	open    chan struct{}
	peak    *atomic.Uint64
}

func (d barrierDecompressor) Decompress(compressed []byte, i int) ([]byte, error) {
	out := make([]byte, d.table.Spans[i].Len())
	if _, err := io.ReadFull(flate.NewReader(bytes.NewReader(compressed)), out); err != nil {
		return nil, err
	}
	if d.entered.Add(1) == d.wait {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		d.peak.Store(ms.HeapAlloc)
		close(d.open)
	}
	<-d.open
	return out, nil
}

// compressibleLayer is n spans of size bytes that deflate to little, so
// that fetched compressed bytes do not count in the heap measured.
func compressibleLayer(b *testing.B, n, size int) testLayer {
	chunk := bytes.Repeat([]byte("soci span "), size/10+1)[:size]
	z := deflate(b, chunk)
	var l testLayer
	for i := range n {
		l.table.Spans = append(l.table.Spans, Span{
			CompressedStart: int64(i * len(z)), CompressedEnd: int64((i + 1) * len(z)),
			UncompressedStart: int64(i * size), UncompressedEnd: int64((i + 1) * size),
			Digest: digest.FromBytes(z),
		})
		l.blob = append(l.blob, z...)
	}
	l.table.CompressedSize, l.table.UncompressedSize = int64(len(l.blob)), int64(n*size)
	return l
}

// BenchmarkDecompressPeakHeap reads one 4 KiB piece of each of 64 spans of
// 4 MiB at once, spread over 8 layers, and reports the heap held when the
// most decompressions the bound admits hold their output (peak-MiB, above
// the heap before the reads), with and without a node-wide bound of 16 MiB.
func BenchmarkDecompressPeakHeap(b *testing.B) {
	const layers, perLayer, spanLen = 8, 8, 4 << 20
	for _, limit := range []int64{16 << 20, 0} {
		b.Run(fmt.Sprintf("limit=%dMiB", limit>>20), func(b *testing.B) {
			wait := int64(layers * perLayer)
			if limit > 0 {
				wait = limit / spanLen
			}
			var worst uint64
			for b.Loop() {
				worst = max(worst, peakHeap(b, NewDecompressLimit(limit), wait, layers, perLayer, spanLen))
			}
			b.ReportMetric(float64(worst)/(1<<20), "peak-MiB")
		})
	}
}

func peakHeap(b *testing.B, limit *DecompressLimit, wait int64, layers, perLayer, spanLen int) uint64 {
	var entered atomic.Int64
	var peak atomic.Uint64
	open := make(chan struct{})
	var ms []*Manager
	for range layers {
		l := compressibleLayer(b, perLayer, spanLen)
		dec := barrierDecompressor{table: l.table, wait: wait, entered: &entered, open: open, peak: &peak}
		m, err := New(Options{Table: l.table, Fetcher: &fakeFetcher{blob: l.blob}, Cache: discardCache{},
			Decompressor: dec, CacheKey: testKey, Limit: limit, FetchTimeout: 60e9})
		if err != nil {
			b.Fatal(err)
		}
		ms = append(ms, m)
	}
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var wg sync.WaitGroup
	for _, m := range ms {
		for i := range perLayer {
			wg.Go(func() {
				if _, err := m.FetchAt(b.Context(), make([]byte, 4096), int64(i*spanLen)); err != nil {
					b.Error(err)
				}
			})
		}
	}
	wg.Wait()
	for _, m := range ms {
		m.Close()
	}
	return peak.Load() - min(peak.Load(), base.HeapAlloc)
}
