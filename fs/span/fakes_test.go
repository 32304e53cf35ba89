package span

import (
	"bytes"
	"compress/flate"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

var (
	_ Cache   = (*cache.Memory)(nil)
	_ Cache   = (*cache.Disk)(nil)
	_ Fetcher = (*fakeFetcher)(nil)
	_ Fetcher = (*Manager)(nil) // the layer.Reader shape
)

const testKey = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"

// testLayer is a blob of independent flate streams, one per span, with the
// table describing it and the uncompressed bytes to compare against.
type testLayer struct {
	table Table
	blob  []byte
	data  []byte
}

// buildLayer makes a layer with spans of the given uncompressed sizes. With
// overlap, each span's compressed range also takes the first byte of the next
// span's stream, like gzip checkpoints that start inside a byte.
func buildLayer(t testing.TB, seed uint64, sizes []int, overlap bool) testLayer {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	var l testLayer
	var starts []int64
	for _, n := range sizes {
		chunk := make([]byte, n)
		for i := range chunk {
			if i%64 < 32 {
				chunk[i] = byte(rng.Uint32())
			} else {
				chunk[i] = byte('a' + i%7) // compressible half
			}
		}
		starts = append(starts, int64(len(l.blob)))
		l.blob = append(l.blob, deflate(t, chunk)...)
		l.data = append(l.data, chunk...)
	}
	l.table = Table{CompressedSize: int64(len(l.blob)), UncompressedSize: int64(len(l.data))}
	var u int64
	for i, n := range sizes {
		end := int64(len(l.blob))
		if i+1 < len(sizes) {
			end = starts[i+1]
			if overlap {
				end++
			}
		}
		l.table.Spans = append(l.table.Spans, Span{
			CompressedStart: starts[i], CompressedEnd: end,
			UncompressedStart: u, UncompressedEnd: u + int64(n),
			Digest: digest.FromBytes(l.blob[starts[i]:end]),
		})
		u += int64(n)
	}
	return l
}

func deflate(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w, err := flate.NewWriter(&buf, flate.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// flateDecompressor inflates one span's stream; trailing bytes (the overlap)
// are ignored, as they are by a gzip checkpoint resume.
type flateDecompressor struct{}

func (flateDecompressor) Decompress(compressed []byte, i int) ([]byte, error) {
	out, err := io.ReadAll(flate.NewReader(bytes.NewReader(compressed)))
	if err != nil {
		return nil, fmt.Errorf("inflate span %d: %w", i, err)
	}
	return out, nil
}

// fakeFetcher serves the blob and records every request. Its knobs are set
// through set and read under mu per request.
type fakeFetcher struct {
	blob []byte

	mu        sync.Mutex
	reqs      [][2]int64 // [off, off+len) per request
	corrupt   bool       // flip the first byte returned
	short     bool       // return half the bytes with a nil error
	err       error      // fail every request
	delay     time.Duration
	gate      chan struct{} // when non-nil, block until it is closed
	ignoreCtx bool          // block on gate even when ctx ends
	started   chan struct{} // when non-nil, receives once per request (non-blocking)
}

func (f *fakeFetcher) set(fn func(*fakeFetcher)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeFetcher) FetchAt(ctx context.Context, p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, [2]int64{off, off + int64(len(p))})
	corrupt, short, ferr, delay, gate, ignoreCtx, started := f.corrupt, f.short, f.err, f.delay, f.gate, f.ignoreCtx, f.started
	f.mu.Unlock()
	if started != nil {
		select {
		case started <- struct{}{}:
		default:
		}
	}
	if err := block(ctx, gate, ignoreCtx, delay); err != nil {
		return 0, err
	}
	if ferr != nil {
		return 0, ferr
	}
	if off < 0 || off > int64(len(f.blob)) {
		return 0, errors.New("fake fetcher: offset out of range")
	}
	n := copy(p, f.blob[off:])
	if short {
		return n / 2, nil
	}
	if corrupt && n > 0 {
		p[0] ^= 0xff
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func block(ctx context.Context, gate chan struct{}, ignoreCtx bool, delay time.Duration) error {
	if gate != nil {
		if ignoreCtx {
			<-gate
		} else {
			select {
			case <-gate:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (f *fakeFetcher) requests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

func (f *fakeFetcher) bytes() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for _, r := range f.reqs {
		n += r[1] - r[0]
	}
	return n
}

// fetchesPerSpan counts, per span, the requests that covered its compressed
// range.
func (f *fakeFetcher) fetchesPerSpan(t Table) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	counts := make([]int, len(t.Spans))
	for _, r := range f.reqs {
		for i, s := range t.Spans {
			if r[0] <= s.CompressedStart && s.CompressedEnd <= r[1] {
				counts[i]++
			}
		}
	}
	return counts
}

// failingCache stores nothing: Put always fails, Get always misses.
type failingCache struct{ *cache.Memory }

func (failingCache) Put(string, []byte) error { return errors.New("no space left on device") }

func newManager(t testing.TB, l testLayer, f Fetcher, c Cache, mod func(*Options)) *Manager {
	t.Helper()
	opts := Options{Table: l.table, Fetcher: f, Cache: c, Decompressor: flateDecompressor{}, CacheKey: testKey}
	if mod != nil {
		mod(&opts)
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}
