package background

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"testing"

	"github.com/awslabs/soci-snapshotter/ztoc/compression"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck/tarchecktest"
)

// benchLayer is a 32 MiB gzip layer with its zTOC (4 MiB spans).
func benchLayer(b *testing.B) ([]byte, *index.Layer) {
	b.Helper()
	blob := tarchecktest.Gzip(b, tarchecktest.Tar(b, tarchecktest.Entries(32<<20)))
	z, err := index.ParseZTOC(tarchecktest.ZTOC(b, blob, 4<<20, compression.Gzip), index.Limits{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { z.Close() })
	return blob, z
}

// BenchmarkStreamCheck: the cross-check's pass over a blob fed in 8 MiB
// chunks (inflate, tar headers, per-span sha256); bytes are uncompressed.
func BenchmarkStreamCheck(b *testing.B) {
	blob, z := benchLayer(b)
	l := Layer{Table: z.Spans, Files: &z.TOC, Gzip: true}
	b.SetBytes(z.Spans.UncompressedSize)
	b.ReportAllocs()
	for b.Loop() {
		c := startStreamCheck(context.Background(), l)
		for off := 0; off < len(blob); off += 8 << 20 {
			c.feed(context.Background(), blob[off:min(off+8<<20, len(blob))], nil)
		}
		if err := c.end(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInflateOnly is the baseline: inflating the same blob.
func BenchmarkInflateOnly(b *testing.B) {
	blob, z := benchLayer(b)
	b.SetBytes(z.Spans.UncompressedSize)
	b.ReportAllocs()
	for b.Loop() {
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, zr); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompareSpans: reading every span back from a memory cache and
// hashing it; bytes are uncompressed.
func BenchmarkCompareSpans(b *testing.B) {
	blob, z := benchLayer(b)
	m, err := span.New(span.Options{Table: z.Spans, Fetcher: &fakeBlob{data: blob}, Cache: cache.NewMemory(), Decompressor: z, CacheKey: "l"})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if err := m.Loader().Load(context.Background(), 0, len(z.Spans.Spans)-1, blob, 0); err != nil {
		b.Fatal(err)
	}
	l := Layer{Table: z.Spans, Spans: m.Loader()}
	c := startStreamCheck(context.Background(), Layer{Table: z.Spans, Files: &z.TOC, Gzip: true})
	c.feed(context.Background(), blob, nil)
	if err := c.end(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(z.Spans.UncompressedSize)
	b.ReportAllocs()
	for b.Loop() {
		if missing, err := compareSpans(context.Background(), l, c.sums, func(int) bool { return false }); err != nil || missing != 0 {
			b.Fatal(missing, err)
		}
	}
}
