package index

import (
	"context"
	"io"
	"testing"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// benchBlob serves a blob from memory.
type benchBlob struct{ blob []byte }

func (f benchBlob) FetchAt(_ context.Context, p []byte, off int64) (int, error) {
	n := copy(p, f.blob[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// BenchmarkColdSequentialRead reads a real 8 MiB gzip layer (1 MiB spans)
// from end to end through a fresh span manager: fetch, verify, inflate,
// (checkpoint window checks) and cache every span.
func BenchmarkColdSequentialRead(b *testing.B) {
	tl := newTestLayer(b, 8<<20, 1<<20)
	l, err := ParseZTOC(tl.ztocData, Limits{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	size := l.Spans.UncompressedSize
	p := make([]byte, 128<<10)
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		m, err := span.New(span.Options{Table: l.Spans, Fetcher: benchBlob{tl.blob}, Cache: cache.NewMemory(), Decompressor: l, CacheKey: "l/z"})
		if err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < size; off += int64(len(p)) {
			if _, err := m.FetchAt(context.Background(), p, off); err != nil && err != io.EOF {
				b.Fatal(err)
			}
		}
		m.Close()
	}
}
