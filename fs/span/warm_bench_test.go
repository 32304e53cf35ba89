package span

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

type failFetcher struct{}

func (failFetcher) FetchAt(context.Context, []byte, int64) (int, error) {
	return 0, errors.New("warm benchmark fetched")
}

type storedRaw struct{}

func (storedRaw) Decompress(b []byte, _ int) ([]byte, error) { return b, nil }

// BenchmarkWarmFetchAtDisk reads 4 KiB at random offsets of a 64 MiB
// layer whose 16 spans are all in the disk cache: the per-read cost of a
// warm read (the FUSE host's side of a small file's read).
func BenchmarkWarmFetchAtDisk(b *testing.B) {
	const spanLen, spans = 4 << 20, 16
	data := make([]byte, spanLen*spans)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	var table Table
	for i := range spans {
		s, e := int64(i*spanLen), int64((i+1)*spanLen)
		table.Spans = append(table.Spans, Span{CompressedStart: s, CompressedEnd: e, UncompressedStart: s, UncompressedEnd: e, Digest: digest.FromBytes(data[s:e])})
	}
	table.CompressedSize, table.UncompressedSize = int64(len(data)), int64(len(data))
	c, err := cache.NewDisk(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for _, s := range table.Spans {
		k := testKey + "/" + strconv.FormatInt(s.UncompressedStart, 10) + "-" + strconv.FormatInt(s.UncompressedEnd, 10)
		if err := c.Put(k, data[s.UncompressedStart:s.UncompressedEnd]); err != nil {
			b.Fatal(err)
		}
	}
	m, err := New(Options{Table: table, Fetcher: failFetcher{}, Cache: c, Decompressor: storedRaw{}, CacheKey: testKey})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	p := make([]byte, 4096)
	ctx := context.Background()
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		off := rng.Int64N(int64(len(data)) - int64(len(p)))
		if _, err := m.FetchAt(ctx, p, off); err != nil {
			b.Fatal(err)
		}
	}
}
