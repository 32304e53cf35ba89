package span

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

func TestFind(t *testing.T) {
	l := buildLayer(t, 1, []int{10, 0, 5, 1}, false)
	for _, c := range []struct {
		off  int64
		want int
	}{{0, 0}, {9, 0}, {10, 2}, {14, 2}, {15, 3}} {
		if got := l.table.Find(c.off); got != c.want {
			t.Errorf("Find(%d) = %d, want %d", c.off, got, c.want)
		}
	}
}

func TestFetchAtBoundaries(t *testing.T) {
	l := buildLayer(t, 2, []int{100, 1, 4096, 0, 777, 3000, 0}, true)
	size := l.table.UncompressedSize
	cases := []struct {
		name    string
		off     int64
		n       int
		wantN   int64
		wantEOF bool
	}{
		{"first byte", 0, 1, 1, false},
		{"last byte", size - 1, 1, 1, false},
		{"last byte of span 0", 99, 1, 1, false},
		{"one-byte span", 100, 1, 1, false},
		{"across spans 0-2", 99, 3, 3, false},
		{"across the empty span", 4000, 1000, 1000, false},
		{"whole layer", 0, int(size), size, false},
		{"whole layer and more", 0, int(size) + 10, size, true},
		{"tail", size - 10, 20, 10, true},
		{"at end", size, 10, 0, true},
		{"past end", size + 5, 10, 0, true},
		{"zero length", 50, 0, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeFetcher{blob: l.blob}
			m := newManager(t, l, f, cache.NewMemory(), nil)
			for _, pass := range []string{"cold", "warm"} {
				p := make([]byte, c.n)
				n, err := m.FetchAt(t.Context(), p, c.off)
				if int64(n) != c.wantN || (err == io.EOF) != c.wantEOF || (err != nil && err != io.EOF) {
					t.Fatalf("%s: FetchAt(%d, %d) = %d, %v; want %d, EOF %v", pass, c.off, c.n, n, err, c.wantN, c.wantEOF)
				}
				if c.wantN > 0 && !bytes.Equal(p[:n], l.data[c.off:c.off+c.wantN]) {
					t.Fatalf("%s: wrong bytes", pass)
				}
			}
		})
	}
	m := newManager(t, l, &fakeFetcher{blob: l.blob}, cache.NewMemory(), nil)
	if _, err := m.FetchAt(t.Context(), make([]byte, 1), -1); !errdefs.IsInvalidArgument(err) {
		t.Errorf("negative offset: err = %v, want invalid argument", err)
	}
}

func TestCoalesce(t *testing.T) {
	l := buildLayer(t, 4, []int{1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000}, true)
	f := &fakeFetcher{blob: l.blob}
	m := newManager(t, l, f, cache.NewMemory(), nil)
	read := func(off, n int64) {
		t.Helper()
		p := make([]byte, n)
		if got, err := m.FetchAt(t.Context(), p, off); got != len(p) || err != nil || !bytes.Equal(p, l.data[off:off+n]) {
			t.Fatalf("FetchAt(%d, %d) = %d, %v", off, n, got, err)
		}
	}
	read(1010, 4490) // spans 1..5
	sp := l.table.Spans
	if got := f.requests(); got != 1 {
		t.Fatalf("requests for 5 missing spans = %d, want 1", got)
	}
	if got, want := f.bytes(), sp[5].CompressedEnd-sp[1].CompressedStart; got != want {
		t.Fatalf("bytes fetched = %d, want %d", got, want)
	}
	read(1010, 4490)
	if got := f.requests(); got != 1 {
		t.Fatalf("requests after a warm read = %d, want 1", got)
	}
	read(0, 8000) // spans 0 and 6..7 are missing: two runs
	if got := f.requests(); got != 3 {
		t.Fatalf("requests after whole read = %d, want 3", got)
	}
	if s, total := m.Cached(); s != 8 || total != 8 {
		t.Fatalf("Cached = %d/%d, want 8/8", s, total)
	}
}

func TestCoalesceCap(t *testing.T) {
	l := buildLayer(t, 5, []int{1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000}, true)
	sp := l.table.Spans
	limit := sp[1].CompressedEnd - sp[0].CompressedStart // two spans per request
	f := &fakeFetcher{blob: l.blob}
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.MaxCoalesce = limit })
	p := make([]byte, l.table.UncompressedSize)
	if n, err := m.FetchAt(t.Context(), p, 0); n != len(p) || err != nil || !bytes.Equal(p, l.data) {
		t.Fatalf("FetchAt = %d, %v", n, err)
	}
	if got := f.requests(); got <= 1 || got >= 8 {
		t.Errorf("requests = %d, want more than 1 (capped) and fewer than 8 (coalesced)", got)
	}
	for _, r := range f.reqs {
		if r[1]-r[0] > limit {
			t.Errorf("request of %d bytes exceeds MaxCoalesce %d", r[1]-r[0], limit)
		}
	}
}

func TestVerificationFailure(t *testing.T) {
	l := buildLayer(t, 6, []int{1000, 1000, 1000}, true)
	f := &fakeFetcher{blob: l.blob, corrupt: true}
	c := cache.NewMemory()
	m := newManager(t, l, f, c, nil)
	p := make([]byte, 10)
	n, err := m.FetchAt(t.Context(), p, 0)
	if n != 0 || !errors.Is(err, ErrVerification) {
		t.Fatalf("FetchAt = %d, %v; want 0, ErrVerification", n, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "span 0") || !strings.Contains(msg, testKey) {
		t.Errorf("error %q does not name span and layer", msg)
	}
	if s, _ := m.Cached(); s != 0 || c.Len() != 0 {
		t.Fatalf("after failures: Cached = %d, cache entries = %d; want 0, 0", s, c.Len())
	}
	f.set(func(f *fakeFetcher) { f.corrupt = false })
	if n, err := m.FetchAt(t.Context(), p, 0); n != len(p) || err != nil || !bytes.Equal(p, l.data[:10]) {
		t.Fatalf("after fix: FetchAt = %d, %v", n, err)
	}
}

func TestShortRead(t *testing.T) {
	l := buildLayer(t, 7, []int{1000, 1000}, false)
	f := &fakeFetcher{blob: l.blob, short: true}
	m := newManager(t, l, f, cache.NewMemory(), nil)
	if _, err := m.FetchAt(t.Context(), make([]byte, 10), 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("FetchAt = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestDecompressedLengthMismatch(t *testing.T) {
	l := buildLayer(t, 8, []int{1000, 1000}, false)
	l.table.Spans[0].UncompressedEnd = 999 // table claims fewer bytes than the stream holds
	l.table.Spans[1].UncompressedStart = 999
	m := newManager(t, l, &fakeFetcher{blob: l.blob}, cache.NewMemory(), nil)
	if _, err := m.FetchAt(t.Context(), make([]byte, 10), 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("FetchAt = %v, want a length error", err)
	}
}

func TestPutFailureServesFromMemory(t *testing.T) {
	l := buildLayer(t, 9, []int{1000, 1000}, true)
	f := &fakeFetcher{blob: l.blob}
	m := newManager(t, l, f, failingCache{cache.NewMemory()}, nil)
	for i := 1; i <= 2; i++ {
		p := make([]byte, 1500)
		if n, err := m.FetchAt(t.Context(), p, 200); n != len(p) || err != nil || !bytes.Equal(p, l.data[200:1700]) {
			t.Fatalf("FetchAt = %d, %v", n, err)
		}
		if got := f.requests(); got != i {
			t.Fatalf("requests = %d, want %d (nothing is kept)", got, i)
		}
	}
	if s, _ := m.Cached(); s != 0 {
		t.Fatalf("Cached = %d, want 0", s)
	}
}

func TestCacheLossRefetches(t *testing.T) {
	l := buildLayer(t, 10, []int{1000, 1000}, true)
	f := &fakeFetcher{blob: l.blob}
	c := cache.NewMemory()
	m := newManager(t, l, f, c, nil)
	readAll(t, m, l)
	if err := c.Remove(testKey); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 2000)
	if n, err := m.FetchAt(t.Context(), p, 0); n != len(p) || err != nil || !bytes.Equal(p, l.data) {
		t.Fatalf("FetchAt after cache loss = %d, %v", n, err)
	}
	if got := f.requests(); got != 3 {
		t.Fatalf("requests = %d, want 3 (one first read, one refetch per lost span)", got)
	}
	if s, _ := m.Cached(); s != 2 {
		t.Fatalf("Cached = %d, want 2", s)
	}
}

func TestRestartUsesDiskCache(t *testing.T) {
	l := buildLayer(t, 11, []int{4096, 4096, 4096, 100}, true)
	dir := t.TempDir()
	d, err := cache.NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeFetcher{blob: l.blob}
	m := newManager(t, l, f, d, nil)
	readAll(t, m, l)
	m.Close()
	if _, err := m.FetchAt(t.Context(), make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("FetchAt after Close = %v, want ErrClosed", err)
	}

	d2, err := cache.NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	f2 := &fakeFetcher{blob: l.blob}
	m2 := newManager(t, l, f2, d2, nil)
	p := make([]byte, l.table.UncompressedSize)
	if n, err := m2.FetchAt(t.Context(), p, 0); n != len(p) || err != nil || !bytes.Equal(p, l.data) {
		t.Fatalf("FetchAt after restart = %d, %v", n, err)
	}
	if got := f2.requests(); got != 0 {
		t.Fatalf("requests after restart = %d, want 0", got)
	}
	if s, total := m2.Cached(); s != total {
		t.Fatalf("Cached = %d/%d", s, total)
	}
}

func TestNewValidates(t *testing.T) {
	l := buildLayer(t, 12, []int{10}, false)
	ok := Options{Table: l.table, Fetcher: &fakeFetcher{}, Cache: cache.NewMemory(), Decompressor: flateDecompressor{}, CacheKey: testKey}
	for name, mod := range map[string]func(*Options){
		"empty table":    func(o *Options) { o.Table = Table{} },
		"gap":            func(o *Options) { o.Table.UncompressedSize++ },
		"no fetcher":     func(o *Options) { o.Fetcher = nil },
		"no cache":       func(o *Options) { o.Cache = nil },
		"no decompress":  func(o *Options) { o.Decompressor = nil },
		"no key":         func(o *Options) { o.CacheKey = "" },
		"negative limit": func(o *Options) { o.MaxCoalesce = -1 },
	} {
		o := ok
		o.Table.Spans = append([]Span(nil), ok.Table.Spans...)
		mod(&o)
		if _, err := New(o); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: New = %v, want invalid argument", name, err)
		}
	}
	m, err := New(ok)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}

// waitStarted waits for the fake fetcher to receive a request.
func waitStarted(t *testing.T, started chan struct{}) {
	t.Helper()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("fetch did not start")
	}
}

// readAll reads the whole layer through m, which makes every span local.
func readAll(tb testing.TB, m *Manager, l testLayer) {
	tb.Helper()
	p := make([]byte, l.table.UncompressedSize)
	if n, err := m.FetchAt(tb.Context(), p, 0); n != len(p) || (err != nil && !errors.Is(err, io.EOF)) || !bytes.Equal(p, l.data) {
		tb.Fatalf("read the whole layer: %d of %d bytes, %v", n, len(p), err)
	}
}
