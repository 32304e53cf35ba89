package background

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// testBlob is a real gzip blob cut into spans the way zTOCs cut them: the
// first span starts after the gzip header, neighbours overlap by one byte
// and the last one ends before the trailer.
type testBlob struct {
	blob   []byte
	digest digest.Digest
	table  span.Table
}

func newTestBlob(t *testing.T, seed uint64, size, nspans int) testBlob {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	data := make([]byte, size)
	for i := range data {
		if i%64 < 40 {
			data[i] = byte(rng.Uint32())
		}
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Name = "layer.tar" // a longer header
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	b := testBlob{blob: buf.Bytes(), digest: digest.FromBytes(buf.Bytes())}
	header, trailer := int64(10+len("layer.tar")+1), int64(8)
	body := int64(len(b.blob)) - header - trailer
	b.table = span.Table{CompressedSize: int64(len(b.blob)), UncompressedSize: int64(size)}
	for i := range nspans {
		cs := header + body*int64(i)/int64(nspans)
		ce := header + body*int64(i+1)/int64(nspans)
		if i > 0 {
			cs-- // the one-byte overlap with the previous span
		}
		us, ue := int64(size)*int64(i)/int64(nspans), int64(size)*int64(i+1)/int64(nspans)
		b.table.Spans = append(b.table.Spans, span.Span{
			CompressedStart: cs, CompressedEnd: ce, UncompressedStart: us, UncompressedEnd: ue,
			Digest: digest.FromBytes(b.blob[cs:ce]),
		})
	}
	if err := b.table.Validate(); err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeBlob serves a byte slice; before, if set, runs before each read.
type fakeBlob struct {
	data   []byte
	before func(ctx context.Context, off int64) error
	mu     sync.Mutex
	reads  []int64
}

func (f *fakeBlob) FetchAt(ctx context.Context, p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.reads = append(f.reads, off)
	f.mu.Unlock()
	if f.before != nil {
		if err := f.before(ctx, off); err != nil {
			return 0, err
		}
	}
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// fetches returns how many fetches were made so far.
func (f *fakeBlob) fetches() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reads)
}

// fakeSpans verifies span digests like a span manager and records loads.
type fakeSpans struct {
	table  span.Table
	mu     sync.Mutex
	loaded []int
	have   map[int]bool   // spans a reader already brought in
	kept   map[int][]byte // compressed copies a reader kept
	waited bool           // a read waits for every reserved span
}

func (f *fakeSpans) Waited(first, last int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.waited
}

func (f *fakeSpans) Compressed(ctx context.Context, i int) ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.kept[i]
	return c, ok
}

func (f *fakeSpans) DropCompressed(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kept = nil
}

// Reserve reserves nothing but reports the spans up to the first local one.
func (f *fakeSpans) Reserve(ctx context.Context, first, last int) int {
	i := first
	for i <= last && !f.Has(ctx, i) {
		i++
	}
	return i - 1
}

func (f *fakeSpans) Release(first, last int) {}

// LoadPlain is never called: walks over a fakeSpans have no file table,
// hence no stream check to load spans from.
func (f *fakeSpans) LoadPlain(context.Context, int, []byte) error {
	return errors.New("fakeSpans: no stream check")
}

// Complete is false: a fake forgets what it loaded across schedulers (see
// completeSpans).
func (f *fakeSpans) Complete(context.Context) bool { return false }

// ReadCached holds no uncompressed bytes: walks over a fakeSpans have no
// file table to cross-check against.
func (f *fakeSpans) ReadCached(context.Context, int, []byte, int64) bool { return false }

func (f *fakeSpans) Has(ctx context.Context, i int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.have[i] || slices.Contains(f.loaded, i)
}

func (f *fakeSpans) Load(ctx context.Context, first, last int, compressed []byte, base int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for i := first; i <= last; i++ {
		s := f.table.Spans[i]
		if digest.FromBytes(compressed[s.CompressedStart-base:s.CompressedEnd-base]) != s.Digest {
			errs = append(errs, fmt.Errorf("span %d: %w", i, span.ErrVerification))
			continue
		}
		f.loaded = append(f.loaded, i)
	}
	return errors.Join(errs...)
}

// fakeObserver counts what the scheduler reports.
type fakeObserver struct {
	mu       sync.Mutex
	bytes    int64
	layers   int
	failures map[string]int
	fetched  map[string]time.Duration
	full     int
}

func (o *fakeObserver) LayerFetched(layer string, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fetched == nil {
		o.fetched = map[string]time.Duration{}
	}
	o.fetched[layer] = took
}

func (o *fakeObserver) QueueFull() { o.mu.Lock(); o.full++; o.mu.Unlock() }

func (o *fakeObserver) BackgroundBytes(n int64) { o.mu.Lock(); o.bytes += n; o.mu.Unlock() }
func (o *fakeObserver) LayerCompleted()         { o.mu.Lock(); o.layers++; o.mu.Unlock() }
func (o *fakeObserver) Failure(kind string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failures == nil {
		o.failures = map[string]int{}
	}
	o.failures[kind]++
}

// newTestScheduler starts a Scheduler that reports every finished layer to
// onDone.
func newTestScheduler(opts Options, onDone func(key string, err error)) *Scheduler {
	s := New(opts)
	s.onDone = onDone // before the first Enqueue, which the workers wait for
	return s
}

// results collects the layers a scheduler finished (Scheduler.onDone).
type results struct {
	mu   sync.Mutex
	ch   chan string
	errs map[string]error
}

func newResults() *results { return &results{ch: make(chan string, 100), errs: map[string]error{}} }

func (r *results) onDone(key string, err error) {
	r.mu.Lock()
	r.errs[key] = err
	r.mu.Unlock()
	r.ch <- key
}

func (r *results) wait(t *testing.T, key string) error {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		err, ok := r.errs[key]
		r.mu.Unlock()
		if ok {
			return err
		}
		select {
		case <-r.ch:
		case <-timeout:
			t.Fatalf("layer %s not done after 10s", key)
		}
	}
}

func layerOf(key string, b testBlob, blob *fakeBlob) (Layer, *fakeSpans) {
	fs := &fakeSpans{table: b.table}
	return Layer{Key: key, Digest: b.digest, Table: b.table, Blob: blob, Spans: fs}, fs
}

func TestCompleteVerifiesLayerDigest(t *testing.T) {
	for _, chunkSize := range []int64{1, 100 << 10, 64 << 20} {
		t.Run(fmt.Sprint(chunkSize), func(t *testing.T) {
			b := newTestBlob(t, 1, 1<<20, 10)
			res, obs := newResults(), &fakeObserver{}
			s := newTestScheduler(Options{ChunkSize: chunkSize, Observer: obs}, res.onDone)
			defer s.Close()
			blob := &fakeBlob{data: b.blob}
			l, spans := layerOf("/mnt/a", b, blob)
			if !s.Enqueue(context.Background(), l) {
				t.Fatal("not queued")
			}
			if err := res.wait(t, "/mnt/a"); err != nil {
				t.Fatalf("layer: %v", err)
			}
			if want := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}; !slices.Equal(spans.loaded, want) {
				t.Errorf("loaded spans %v, want %v", spans.loaded, want)
			}
			if !slices.IsSorted(blob.reads) || blob.reads[0] != 0 {
				t.Errorf("reads not in order from the header: %v", blob.reads)
			}
			obs.mu.Lock()
			defer obs.mu.Unlock()
			// Every byte once, plus the overlapping byte of each later chunk.
			if min, max := int64(len(b.blob)), int64(len(b.blob)+len(b.table.Spans)); obs.bytes < min || obs.bytes > max {
				t.Errorf("fetched %d bytes, want %d-%d", obs.bytes, min, max)
			}
			if obs.layers != 1 || len(obs.failures) != 0 {
				t.Errorf("observer: %d layers, failures %v", obs.layers, obs.failures)
			}
			// A completed layer mounted again (its spans cached) is local
			// without a download.
			blob2 := &fakeBlob{data: b.blob}
			l2 := Layer{Key: "/mnt/a2", Digest: b.digest, Table: b.table, Blob: blob2, Spans: completeSpans{spans}}
			s.Enqueue(context.Background(), l2)
			if err := res.wait(t, "/mnt/a2"); err != nil || len(blob2.reads) != 0 {
				t.Errorf("second mount: %v, %d reads", err, len(blob2.reads))
			}
		})
	}
}

func TestDigestMismatchInHeader(t *testing.T) {
	b := newTestBlob(t, 2, 300<<10, 4)
	bad := slices.Clone(b.blob)
	bad[4] ^= 0xff // mtime in the gzip header: no span covers it
	res, obs := newResults(), &fakeObserver{}
	s := newTestScheduler(Options{Observer: obs}, res.onDone)
	defer s.Close()
	l, spans := layerOf("/mnt/bad", b, &fakeBlob{data: bad})
	s.Enqueue(context.Background(), l)
	err := res.wait(t, "/mnt/bad")
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("want a digest mismatch, got %v", err)
	}
	if len(spans.loaded) != 4 {
		t.Errorf("every span verifies on its own, loaded %v", spans.loaded)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.failures["verification"] != 1 || obs.layers != 0 {
		t.Errorf("observer: failures %v, layers %d", obs.failures, obs.layers)
	}
}

func TestCorruptSpanFailsLayer(t *testing.T) {
	b := newTestBlob(t, 3, 300<<10, 4)
	bad := slices.Clone(b.blob)
	bad[b.table.Spans[2].CompressedStart+5] ^= 0xff
	res := newResults()
	s := newTestScheduler(Options{ChunkSize: 1}, res.onDone)
	defer s.Close()
	l, spans := layerOf("/mnt/c", b, &fakeBlob{data: bad})
	s.Enqueue(context.Background(), l)
	if err := res.wait(t, "/mnt/c"); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("want a digest mismatch, got %v", err)
	}
	if want := []int{0, 1, 3}; !slices.Equal(spans.loaded, want) {
		t.Errorf("loaded %v, want %v", spans.loaded, want)
	}
}

func TestFetchFailureGivesUp(t *testing.T) {
	b := newTestBlob(t, 4, 100<<10, 2)
	res, obs := newResults(), &fakeObserver{}
	s := newTestScheduler(Options{Observer: obs, RetryWait: time.Millisecond, MaxAttempts: 3}, res.onDone)
	defer s.Close()
	blob := &fakeBlob{data: b.blob, before: func(context.Context, int64) error { return errors.New("registry down") }}
	l, _ := layerOf("/mnt/f", b, blob)
	s.Enqueue(context.Background(), l)
	if err := res.wait(t, "/mnt/f"); err == nil || errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("want a fetch error, got %v", err)
	}
	if len(blob.reads) != 3 || obs.failures["fetch"] != 3 {
		t.Errorf("%d reads, failures %v; want 3 attempts", len(blob.reads), obs.failures)
	}
}

func TestPausesWhileDemandWaits(t *testing.T) {
	// In a bubble, synctest.Wait tells when the workers are blocked.
	synctest.Test(t, func(t *testing.T) {
		b := newTestBlob(t, 5, 1<<20, 8)
		res := newResults()
		s := newTestScheduler(Options{ChunkSize: 1, Workers: 4}, res.onDone)
		defer s.Close()
		var once sync.Once
		started := make(chan struct{})
		blob := &fakeBlob{data: b.blob, before: func(context.Context, int64) error {
			once.Do(func() {
				s.BeginDemand() // a demand read starts while the first chunk is in flight
				close(started)
			})
			return nil
		}}
		l, _ := layerOf("/mnt/d", b, blob)
		s.Enqueue(context.Background(), l)
		<-started
		synctest.Wait() // every worker blocks: the one in flight waits for the demand read
		n := blob.fetches()
		if n != 1 {
			t.Errorf("%d range requests while a demand read waited, want only the one in flight", n)
		}
		s.EndDemand()
		if err := res.wait(t, "/mnt/d"); err != nil {
			t.Fatal(err)
		}
		if len(blob.reads) != 8 {
			t.Errorf("%d reads, want 8", len(blob.reads))
		}
	})
}

func TestCancelStopsPromptly(t *testing.T) {
	// In a bubble, synctest.Wait tells when the workers are idle again.
	synctest.Test(t, func(t *testing.T) {
		b := newTestBlob(t, 9, 1<<20, 8)
		res := newResults()
		s := newTestScheduler(Options{ChunkSize: 1}, res.onDone)
		defer s.Close()
		inFlight := make(chan struct{}, 10)
		blob := &fakeBlob{data: b.blob, before: func(ctx context.Context, _ int64) error {
			inFlight <- struct{}{}
			<-ctx.Done() // a registry that never answers
			return ctx.Err()
		}}
		l, _ := layerOf("/mnt/x", b, blob)
		s.Enqueue(context.Background(), l)
		<-inFlight
		start := time.Now()
		s.Cancel("/mnt/x")
		if took := time.Since(start); took > time.Second {
			t.Errorf("Cancel took %v", took)
		}
		synctest.Wait() // whatever the workers still do after Cancel is done
		if len(blob.reads) != 1 {
			t.Errorf("%d reads after cancel, want 1", len(blob.reads))
		}
		res.mu.Lock()
		if _, ok := res.errs["/mnt/x"]; ok {
			t.Error("a canceled layer was reported done")
		}
		res.mu.Unlock()

		// Canceling a queued (delayed) layer drops it.
		s2 := newTestScheduler(Options{Delay: time.Hour}, res.onDone)
		defer s2.Close()
		blob2 := &fakeBlob{data: b.blob}
		l2, _ := layerOf("/mnt/y", b, blob2)
		s2.Enqueue(context.Background(), l2)
		s2.Cancel("/mnt/y")
		if len(s2.queue) != 0 {
			t.Errorf("queue still holds %d layers", len(s2.queue))
		}
	})
}

func TestDelayAndQueueBound(t *testing.T) {
	mk := func(seed uint64, key string) Layer {
		b := newTestBlob(t, seed, 32<<10, 1)
		return Layer{Key: key, Digest: b.digest, Table: b.table, Blob: &fakeBlob{data: b.blob}, Spans: &fakeSpans{table: b.table}}
	}
	t.Run("newest", func(t *testing.T) {
		s := New(Options{Delay: time.Hour, MaxQueue: 2})
		defer s.Close()
		for i, k := range []string{"a", "b", "c"} {
			ok := s.Enqueue(context.Background(), mk(uint64(10+i), k))
			if ok != (k != "c") {
				t.Errorf("%s queued: %v", k, ok)
			}
		}
	})
	t.Run("oldest", func(t *testing.T) {
		s := New(Options{Delay: time.Hour, MaxQueue: 2, DropOldest: true})
		defer s.Close()
		for i, k := range []string{"a", "b", "c"} {
			if !s.Enqueue(context.Background(), mk(uint64(20+i), k)) {
				t.Errorf("%s not queued", k)
			}
		}
		var keys []string
		for _, j := range s.queue {
			keys = append(keys, j.layer.Key)
		}
		if !slices.Equal(keys, []string{"b", "c"}) {
			t.Errorf("queue %v, want [b c]", keys)
		}
	})
	t.Run("delay", func(t *testing.T) {
		// In a bubble the delay passes on a fake clock.
		synctest.Test(t, func(t *testing.T) {
			res := newResults()
			s := newTestScheduler(Options{Delay: 150 * time.Millisecond}, res.onDone)
			defer s.Close()
			start := time.Now()
			s.Enqueue(context.Background(), mk(30, "d"))
			if err := res.wait(t, "d"); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took < 150*time.Millisecond {
				t.Errorf("layer done after %v, before the delay", took)
			}
		})
	})
}

func TestCloseStopsWork(t *testing.T) {
	// In a bubble, synctest.Wait tells when the fetch is in flight.
	synctest.Test(t, func(t *testing.T) {
		b := newTestBlob(t, 40, 256<<10, 4)
		s := New(Options{ChunkSize: 1})
		blob := &fakeBlob{data: b.blob, before: func(ctx context.Context, _ int64) error {
			<-ctx.Done()
			return ctx.Err()
		}}
		l, _ := layerOf("/mnt/z", b, blob)
		s.Enqueue(context.Background(), l)
		synctest.Wait() // a worker waits in the stalled range request
		if len(blob.reads) != 1 {
			t.Fatalf("%d range requests in flight, want 1", len(blob.reads))
		}
		done := make(chan struct{})
		go func() { s.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			t.Fatal("Close hangs")
		}
		if s.Enqueue(context.Background(), l) {
			t.Error("queued after Close")
		}
	})
}

// completeSpans is a fakeSpans that reports all spans cached once loaded.
type completeSpans struct{ *fakeSpans }

func (c completeSpans) Complete(context.Context) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.loaded) == len(c.table.Spans)
}

// TestRestartSkipsVerifiedLayer: a new scheduler on the same StateDir does
// not download a layer verified before whose spans are all still cached.
func TestRestartSkipsVerifiedLayer(t *testing.T) {
	b := newTestBlob(t, 50, 256<<10, 4)
	dir := t.TempDir()
	spans := completeSpans{&fakeSpans{table: b.table}}
	run := func() int {
		res := newResults()
		s := newTestScheduler(Options{StateDir: dir}, res.onDone)
		defer s.Close()
		blob := &fakeBlob{data: b.blob}
		s.Enqueue(context.Background(), Layer{Key: "/mnt/r", Digest: b.digest, Table: b.table, Blob: blob, Spans: spans})
		if err := res.wait(t, "/mnt/r"); err != nil {
			t.Fatal(err)
		}
		return len(blob.reads)
	}
	if n := run(); n == 0 {
		t.Fatal("first run read nothing")
	}
	if n := run(); n != 0 {
		t.Errorf("second run read %d chunks of a verified, cached layer", n)
	}
	// Without the cached spans it is fetched again.
	spans.fakeSpans.loaded = nil
	if n := run(); n == 0 {
		t.Error("a layer whose spans are gone was not fetched again")
	}
}

// TestSameLayerTwice: a layer mounted at two places is downloaded once; the
// second mount waits for the first fetch and finds the spans cached.
func TestSameLayerTwice(t *testing.T) {
	b := newTestBlob(t, 60, 512<<10, 4)
	res := newResults()
	s := newTestScheduler(Options{ChunkSize: 1}, res.onDone)
	defer s.Close()
	spans := completeSpans{&fakeSpans{table: b.table}}
	gate := make(chan struct{}) // the first fetch waits until both are queued
	blob := &fakeBlob{data: b.blob, before: func(context.Context, int64) error {
		<-gate
		return nil
	}}
	for _, k := range []string{"/mnt/1", "/mnt/2"} {
		s.Enqueue(context.Background(), Layer{Key: k, Digest: b.digest, Table: b.table, Blob: blob, Spans: spans})
	}
	close(gate)
	for _, k := range []string{"/mnt/1", "/mnt/2"} {
		if err := res.wait(t, k); err != nil {
			t.Fatal(k, err)
		}
	}
	if len(blob.reads) != 4 {
		t.Errorf("%d range requests, want 4 (one download)", len(blob.reads))
	}
}

// TestSkipsSpansReadersFetched: spans a demand read already brought in are
// not loaded again; the rest are. Their compressed bytes, which the reads
// did not keep, are fetched once more for the whole-blob digest check, so
// the layer is still verified and reported fully local.
func TestSkipsSpansReadersFetched(t *testing.T) {
	b := newTestBlob(t, 4, 1<<20, 8)
	res, obs := newResults(), &fakeObserver{}
	s := newTestScheduler(Options{ChunkSize: 64 << 20, Observer: obs}, res.onDone)
	defer s.Close()
	blob := &fakeBlob{data: b.blob}
	l, spans := layerOf("/mnt/part", b, blob)
	spans.have = map[int]bool{2: true, 3: true, 6: true}
	s.Enqueue(context.Background(), l)
	// The reads kept no compressed copies: the walk fetches those spans'
	// bytes again for the whole-blob check (without loading them again)
	// and reports the layer verified.
	if err := res.wait(t, "/mnt/part"); err != nil {
		t.Fatalf("layer: %v", err)
	}
	if want := []int{0, 1, 4, 5, 7}; !slices.Equal(spans.loaded, want) {
		t.Errorf("loaded spans %v, want %v", spans.loaded, want)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if max := int64(len(b.blob)) + int64(len(b.table.Spans)); obs.bytes > max {
		t.Errorf("fetched %d bytes, want at most the blob (%d)", obs.bytes, max)
	}
	if obs.layers != 1 || len(obs.failures) != 0 {
		t.Errorf("observer: %d layers, failures %v; want 1 and none", obs.layers, obs.failures)
	}
}

// TestHashesKeptSpans: spans a read brought in with their compressed bytes
// kept are hashed from those, not fetched again, and the whole-blob check
// still runs (and still catches a corrupt gzip header).
func TestHashesKeptSpans(t *testing.T) {
	b := newTestBlob(t, 5, 1<<20, 8)
	for _, corrupt := range []bool{false, true} {
		data := slices.Clone(b.blob)
		if corrupt {
			data[4] ^= 0xff // gzip header: no span covers it
		}
		res, obs := newResults(), &fakeObserver{}
		s := newTestScheduler(Options{ChunkSize: 64 << 20, Observer: obs}, res.onDone)
		l, spans := layerOf("/mnt/kept", b, &fakeBlob{data: data})
		spans.have = map[int]bool{0: true, 3: true, 7: true}
		spans.kept = map[int][]byte{}
		var skipped int64
		for i := range spans.have {
			sp := b.table.Spans[i]
			spans.kept[i] = b.blob[sp.CompressedStart:sp.CompressedEnd]
			skipped += sp.CompressedEnd - sp.CompressedStart
		}
		s.Enqueue(context.Background(), l)
		err := res.wait(t, "/mnt/kept")
		s.Close()
		if corrupt != errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("corrupt header %v: got %v", corrupt, err)
		}
		if !corrupt && err != nil {
			t.Fatalf("layer: %v", err)
		}
		if want := []int{1, 2, 4, 5, 6}; !slices.Equal(spans.loaded, want) {
			t.Errorf("loaded spans %v, want %v", spans.loaded, want)
		}
		obs.mu.Lock()
		if max := int64(len(b.blob)) - skipped + int64(len(b.table.Spans)); obs.bytes > max {
			t.Errorf("fetched %d bytes, want at most %d", obs.bytes, max)
		}
		obs.mu.Unlock()
		if spans.kept != nil {
			t.Errorf("kept compressed spans not dropped after the walk")
		}
	}
}

// TestQuietAfterDemand: a chunk starts only once demand has been over for
// Options.Quiet, and a demand meanwhile starts the wait anew.
func TestQuietAfterDemand(t *testing.T) {
	// In a bubble the quiet period passes on a fake clock.
	synctest.Test(t, func(t *testing.T) {
		b := newTestBlob(t, 6, 256<<10, 2)
		res := newResults()
		const quiet = time.Second
		s := newTestScheduler(Options{ChunkSize: 1, Quiet: quiet}, res.onDone)
		defer s.Close()
		var mu sync.Mutex
		var first time.Time
		blob := &fakeBlob{data: b.blob, before: func(context.Context, int64) error {
			mu.Lock()
			if first.IsZero() {
				first = time.Now()
			}
			mu.Unlock()
			return nil
		}}
		start := time.Now()
		s.BeginDemand()
		s.EndDemand()
		l, _ := layerOf("/mnt/q", b, blob)
		s.Enqueue(context.Background(), l)
		time.Sleep(quiet / 2)
		synctest.Wait()
		s.BeginDemand() // another demand half-way through the quiet period
		s.EndDemand()
		again := time.Now()
		if err := res.wait(t, "/mnt/q"); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if first.IsZero() || first.Before(again.Add(quiet)) {
			t.Errorf("first chunk %v after the start, want at least %v (quiet after the last demand)", first.Sub(start), again.Add(quiet).Sub(start))
		}
	})
}

// OnIdle is called once the last walk ends, not while a layer still waits.
func TestOnIdleAfterLastWalk(t *testing.T) {
	a, b := newTestBlob(t, 11, 300<<10, 3), newTestBlob(t, 12, 300<<10, 3)
	var mu sync.Mutex
	idles := 0
	res := newResults()
	s := newTestScheduler(Options{Workers: 1, OnIdle: func() { mu.Lock(); idles++; mu.Unlock() }}, res.onDone)
	defer s.Close()
	gate := make(chan struct{})
	blobA := &fakeBlob{data: a.blob, before: func(ctx context.Context, _ int64) error {
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	la, _ := layerOf("/mnt/a", a, blobA)
	lb, _ := layerOf("/mnt/b", b, &fakeBlob{data: b.blob})
	s.Enqueue(context.Background(), la)
	s.Enqueue(context.Background(), lb) // waits: one worker, busy with a
	close(gate)
	for _, key := range []string{"/mnt/a", "/mnt/b"} {
		if err := res.wait(t, key); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if idles != 1 {
		t.Errorf("OnIdle called %d times, want once (after the second layer)", idles)
	}
}

// stopFirstFetch is a fakeBlob's before that holds the first fetch, once
// it closed inFlight, until its context ends (the chunk is stopped); later
// fetches go through.
func stopFirstFetch(inFlight chan struct{}) func(context.Context, int64) error {
	return onFirstFetch(func(ctx context.Context) error {
		close(inFlight)
		<-ctx.Done()
		return ctx.Err()
	})
}

// onFirstFetch is a fakeBlob's before that runs first for the first fetch
// only; later fetches go through.
func onFirstFetch(first func(context.Context) error) func(context.Context, int64) error {
	var once sync.Once
	return func(ctx context.Context, _ int64) error {
		isFirst := false
		once.Do(func() { isFirst = true })
		if !isFirst {
			return nil
		}
		return first(ctx)
	}
}

// holdFirstFetch is a fakeBlob's before that holds the first fetch of the
// layer under key, once it sent key on inFlight, until letGo is closed or
// its context ends (the chunk is stopped: then stopped records key); later
// fetches go through.
func holdFirstFetch(key string, inFlight chan<- string, letGo <-chan struct{}, stopped *sync.Map) func(context.Context, int64) error {
	return onFirstFetch(func(ctx context.Context) error {
		inFlight <- key
		select {
		case <-ctx.Done():
			stopped.Store(key, true)
			return ctx.Err()
		case <-letGo:
			return nil
		}
	})
}

func TestPreemptStopsChunkInFlight(t *testing.T) {
	// In a bubble, synctest.Wait tells when the workers are blocked.
	synctest.Test(t, func(t *testing.T) {
		b := newTestBlob(t, 11, 1<<20, 4)
		res, obs := newResults(), &fakeObserver{}
		// One attempt per chunk: a preemption counted as a failed attempt
		// would end the layer.
		s := newTestScheduler(Options{ChunkSize: 1, Workers: 1, MaxAttempts: 1, Observer: obs}, res.onDone)
		defer s.Close()
		inFlight := make(chan struct{})
		blob := &fakeBlob{data: b.blob, before: stopFirstFetch(inFlight)}
		l, _ := layerOf("/mnt/p", b, blob)
		s.Enqueue(context.Background(), l)
		<-inFlight
		s.Preempt()
		if err := res.wait(t, "/mnt/p"); err != nil {
			t.Fatalf("preempted layer: %v", err)
		}
		blob.mu.Lock()
		defer blob.mu.Unlock()
		if len(blob.reads) != 5 || blob.reads[0] != blob.reads[1] {
			t.Errorf("reads at %v, want the preempted chunk again, then the other 3", blob.reads)
		}
		if len(obs.failures) != 0 {
			t.Errorf("failures %v, want none", obs.failures)
		}
	})
}

func TestMountHoldsWalkWithoutQuiet(t *testing.T) {
	// On a slow link (or without FastLink) the walk resumes as soon as the
	// mount is over; on a fast link only after Options.Quiet.
	for _, fast := range []bool{false, true} {
		t.Run(fmt.Sprintf("fast=%v", fast), func(t *testing.T) { testMountHoldsWalk(t, fast) })
	}
}

func testMountHoldsWalk(t *testing.T, fast bool) {
	// In a bubble, synctest.Wait tells when the workers are blocked, and
	// the clock is fake.
	synctest.Test(t, func(t *testing.T) {
		b := newTestBlob(t, 12, 512<<10, 4)
		res := newResults()
		const quiet, mountQuiet = time.Second, 5 * time.Second // within results.wait's 10 s
		s := newTestScheduler(Options{
			ChunkSize: 1, Workers: 2, Quiet: quiet, MountQuiet: mountQuiet,
			FastLink: func() bool { return fast },
		}, res.onDone)
		defer s.Close()
		inFlight := make(chan struct{})
		blob := &fakeBlob{data: b.blob, before: stopFirstFetch(inFlight)}
		l, _ := layerOf("/mnt/m", b, blob)
		s.Enqueue(context.Background(), l)
		<-inFlight
		s.BeginMount() // the next layer of the image mounts: the chunk in flight stops
		synctest.Wait()
		n := blob.fetches()
		if n != 1 {
			t.Errorf("%d range requests while a layer mounted, want only the preempted one", n)
		}
		start := time.Now()
		s.EndMount()
		if err := res.wait(t, "/mnt/m"); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		if !fast && took >= quiet {
			t.Errorf("walk resumed %v after the mount, want no quiet period (%v) after mounts", took, quiet)
		}
		if fast && took < mountQuiet {
			t.Errorf("walk resumed %v after the mount on a fast link, want MountQuiet (%v) first", took, mountQuiet)
		}
		if len(blob.reads) != 5 {
			t.Errorf("%d reads, want 5", len(blob.reads))
		}
	})
}

func TestPreemptSparesChunkReadsWaitFor(t *testing.T) {
	// In a bubble, synctest.Wait tells when the workers are blocked.
	synctest.Test(t, func(t *testing.T) {
		res := newResults()
		s := newTestScheduler(Options{ChunkSize: 1, Workers: 2}, res.onDone)
		defer s.Close()
		// Two layers, the first chunk of each in flight until stopped or
		// let go.
		inFlight, letGo := make(chan string, 2), make(chan struct{})
		var stopped sync.Map
		mk := func(seed uint64, key string) (Layer, *fakeSpans) {
			b := newTestBlob(t, seed, 256<<10, 2)
			blob := &fakeBlob{data: b.blob, before: holdFirstFetch(key, inFlight, letGo, &stopped)}
			return layerOf(key, b, blob)
		}
		la, spansA := mk(13, "/mnt/a")
		lb, _ := mk(14, "/mnt/b")
		s.Enqueue(context.Background(), la)
		s.Enqueue(context.Background(), lb)
		<-inFlight
		<-inFlight
		spansA.mu.Lock()
		spansA.waited = true // a read waits for layer a's chunk
		spansA.mu.Unlock()
		s.Preempt()
		synctest.Wait()
		if _, ok := stopped.Load("/mnt/b"); !ok {
			t.Error("the chunk no read waits for was not stopped")
		}
		if _, ok := stopped.Load("/mnt/a"); ok {
			t.Error("the chunk a read waits for was stopped")
		}
		close(letGo)
		for _, key := range []string{"/mnt/a", "/mnt/b"} {
			if err := res.wait(t, key); err != nil {
				t.Fatalf("%s: %v", key, err)
			}
		}
	})
}

// An eager layer (Options.EagerBytes) is walked while reads wait and
// right after them, and reads do not stop its chunk in flight.
func TestEagerLayerIgnoresReads(t *testing.T) {
	// In a bubble, synctest.Wait tells when the workers are blocked, and
	// the clock is fake.
	synctest.Test(t, func(t *testing.T) {
		b := newTestBlob(t, 15, 1<<20, 4)
		res := newResults()
		const quiet = time.Hour
		s := newTestScheduler(Options{ChunkSize: 1, Workers: 1, Quiet: quiet, EagerBytes: b.table.CompressedSize}, res.onDone)
		defer s.Close()
		inFlight, letGo := make(chan struct{}), make(chan struct{})
		var once sync.Once
		var stopped atomic.Bool
		blob := &fakeBlob{data: b.blob, before: func(ctx context.Context, _ int64) error {
			first := false
			once.Do(func() { first = true })
			if !first {
				return nil
			}
			close(inFlight)
			select {
			case <-ctx.Done():
				stopped.Store(true)
				return ctx.Err()
			case <-letGo:
				return nil
			}
		}}
		l, _ := layerOf("/mnt/e", b, blob)
		s.Enqueue(context.Background(), l)
		<-inFlight
		if !s.walksEagerly("/mnt/e") {
			t.Error("not eager before any rate was measured")
		}
		s.BeginDemand() // a read misses while the first chunk is in flight
		s.Preempt()
		synctest.Wait()
		if stopped.Load() {
			t.Fatal("a read stopped the eager walk's chunk")
		}
		close(letGo)
		start := time.Now()
		if err := res.wait(t, "/mnt/e"); err != nil {
			t.Fatal(err)
		}
		s.EndDemand()
		if s.walksEagerly("/mnt/e") {
			t.Error("still eager after its walk ended")
		}
		if took := time.Since(start); took >= quiet {
			t.Errorf("eager walk took %v after its first chunk, want no wait for reads or the quiet period (%v)", took, quiet)
		}
		blob.mu.Lock()
		defer blob.mu.Unlock()
		if len(blob.reads) != 4 {
			t.Errorf("reads at %v, want 4: each chunk once, while the read waited", blob.reads)
		}
	})
}

// A layer larger than Options.EagerBytes still yields to reads, and an
// eager one still yields to mounts.
func TestEagerLayerYieldsToMounts(t *testing.T) {
	// In a bubble, synctest.Wait tells when the workers are blocked.
	synctest.Test(t, func(t *testing.T) {
		b := newTestBlob(t, 16, 1<<20, 4)
		for _, tc := range []struct {
			name  string
			eager int64
			stop  func(s *Scheduler) (resume func())
		}{
			{"mount stops an eager chunk", b.table.CompressedSize, func(s *Scheduler) func() { s.BeginMount(); return s.EndMount }},
			{"read stops a chunk of a layer too large to be eager", b.table.CompressedSize - 1, func(s *Scheduler) func() { s.BeginDemand(); s.Preempt(); return s.EndDemand }},
		} {
			res := newResults()
			s := newTestScheduler(Options{ChunkSize: 1, Workers: 1, EagerBytes: tc.eager}, res.onDone)
			inFlight := make(chan struct{})
			blob := &fakeBlob{data: b.blob, before: stopFirstFetch(inFlight)}
			l, _ := layerOf("/mnt/y", b, blob)
			s.Enqueue(context.Background(), l)
			<-inFlight
			resume := tc.stop(s)
			synctest.Wait()
			n := blob.fetches()
			if n != 1 {
				t.Errorf("%s: %d range requests while held, want only the stopped one", tc.name, n)
			}
			resume()
			if err := res.wait(t, "/mnt/y"); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if len(blob.reads) != 5 {
				t.Errorf("%s: %d reads, want the stopped chunk again and the other 3", tc.name, len(blob.reads))
			}
			s.Close()
		}
	})
}

// On a link too slow for the layer to cross it within Options.EagerTime
// at the rate its first chunk measured, the walk yields to reads again.
func TestEagerNeedsFastLink(t *testing.T) {
	// In a bubble the link's pace is a fake clock, and synctest.Wait tells
	// when the workers are blocked.
	synctest.Test(t, func(t *testing.T) {
		b := newTestBlob(t, 17, 8<<20, 4)
		res := newResults()
		// The link carries a quarter of the layer a second: 4 s for all of
		// it, until it is measured.
		var measured atomic.Bool
		rate := func() (float64, bool) { return float64(b.table.CompressedSize) / 4, measured.Load() }
		s := newTestScheduler(Options{ChunkSize: 1, Workers: 1, EagerBytes: b.table.CompressedSize, EagerTime: time.Second, LinkRate: rate}, res.onDone)
		defer s.Close()
		inFlight := make(chan struct{})
		var n atomic.Int32
		var stopped atomic.Bool
		blob := &fakeBlob{data: b.blob, before: func(ctx context.Context, _ int64) error {
			switch n.Add(1) {
			case 1: // the first chunk measures the link
				measured.Store(true)
			case 2:
				close(inFlight)
				<-ctx.Done()
				stopped.Store(true)
				return ctx.Err()
			}
			return nil
		}}
		l, _ := layerOf("/mnt/s", b, blob)
		s.Enqueue(context.Background(), l)
		<-inFlight
		if s.walksEagerly("/mnt/s") {
			t.Error("eager at the measured rate: the layer takes 4 s, EagerTime is 1 s")
		}
		s.Preempt() // a read misses: the chunk in flight stops
		synctest.Wait()
		if !stopped.Load() {
			t.Fatal("a read did not stop the chunk of a layer the link is too slow for")
		}
		if err := res.wait(t, "/mnt/s"); err != nil {
			t.Fatal(err)
		}
		blob.mu.Lock()
		defer blob.mu.Unlock()
		if len(blob.reads) != 5 {
			t.Errorf("reads at %v, want 5: the stopped chunk again", blob.reads)
		}
	})
}

// The layers walked eagerly at once fit in Options.EagerBytes together: of
// two that do not, one yields to reads until the other's walk ends.
func TestEagerBytesNodeWide(t *testing.T) {
	// In a bubble, synctest.Wait tells when the workers are blocked.
	synctest.Test(t, func(t *testing.T) {
		ba, bb := newTestBlob(t, 18, 256<<10, 2), newTestBlob(t, 19, 256<<10, 2)
		res := newResults()
		s := newTestScheduler(Options{ChunkSize: 1, Workers: 2, EagerBytes: max(ba.table.CompressedSize, bb.table.CompressedSize)}, res.onDone)
		defer s.Close()
		inFlight, letGo := make(chan string, 2), make(chan struct{})
		var stopped sync.Map
		mk := func(b testBlob, key string) Layer {
			blob := &fakeBlob{data: b.blob, before: holdFirstFetch(key, inFlight, letGo, &stopped)}
			l, _ := layerOf(key, b, blob)
			return l
		}
		s.Enqueue(context.Background(), mk(ba, "/mnt/a"))
		s.Enqueue(context.Background(), mk(bb, "/mnt/b"))
		<-inFlight
		<-inFlight
		eagerA, eagerB := s.walksEagerly("/mnt/a"), s.walksEagerly("/mnt/b")
		if eagerA == eagerB {
			t.Fatalf("eager walks: a %v, b %v; want exactly one (EagerBytes fits one)", eagerA, eagerB)
		}
		s.Preempt()
		synctest.Wait()
		_, stoppedA := stopped.Load("/mnt/a")
		_, stoppedB := stopped.Load("/mnt/b")
		if stoppedA == eagerA || stoppedB == eagerB {
			t.Errorf("stopped by a read: a %v, b %v; want only the walk that is not eager", stoppedA, stoppedB)
		}
		close(letGo)
		for _, key := range []string{"/mnt/a", "/mnt/b"} {
			if err := res.wait(t, key); err != nil {
				t.Fatalf("%s: %v", key, err)
			}
		}
	})
}

// On a fast link no layer is walked eagerly: reads are quick there, and the
// walk's CPU waits for the container's start (Options.FastLink).
func TestNoEagerWalkOnFastLink(t *testing.T) {
	b := newTestBlob(t, 20, 256<<10, 2)
	for _, fast := range []bool{false, true} {
		s := newTestScheduler(Options{Workers: 1, EagerBytes: b.table.CompressedSize, FastLink: func() bool { return fast }}, nil)
		l, _ := layerOf("/mnt/f", b, &fakeBlob{data: b.blob})
		if got := s.eager(l); got == fast {
			t.Errorf("fast link %v: eager %v", fast, got)
		}
		s.releaseEager(l.Key)
		s.Close()
	}
}

// A layer the link is too slow to walk eagerly holds no share of
// EagerBytes: a smaller layer that crosses the link in time walks eagerly
// beside it, and a layer that becomes too slow gives its share back.
func TestEagerShareOnlyWhileEager(t *testing.T) {
	big, small := newTestBlob(t, 21, 512<<10, 2), newTestBlob(t, 22, 64<<10, 2)
	sizeBig, sizeSmall := big.table.CompressedSize, small.table.CompressedSize
	// The big layer needs 2 s at this rate, the small one well under 1 s.
	rate := float64(sizeBig) / 2
	s := newTestScheduler(Options{Workers: 1, EagerBytes: sizeBig + sizeSmall - 1, EagerTime: time.Second,
		LinkRate: func() (float64, bool) { return rate, true }}, nil)
	defer s.Close()
	lb, _ := layerOf("/mnt/big", big, &fakeBlob{data: big.blob})
	ls, _ := layerOf("/mnt/small", small, &fakeBlob{data: small.blob})
	if s.eager(lb) {
		t.Fatal("the big layer walks eagerly on a link too slow for it")
	}
	if !s.eager(ls) {
		t.Fatal("the small layer does not walk eagerly: the big one kept its share")
	}
	s.releaseEager(ls.Key)
	// At four times the rate the big layer crosses in time and claims; slowed
	// down again, it gives the share back.
	rate *= 4
	if !s.eager(lb) {
		t.Fatal("the big layer does not walk eagerly on a link fast enough for it")
	}
	rate /= 4
	if s.eager(lb) {
		t.Fatal("the big layer still walks eagerly after the link slowed down")
	}
	if !s.eager(ls) {
		t.Error("the small layer does not walk eagerly: the big one kept its share after the link slowed down")
	}
}

// A worker that waited for room in the budget while a read preempted the
// walk does not take the room the stopped chunk freed to start its own
// chunk at once: it yields to the read (Options.Quiet) like the others.
func TestPreemptedWhileWaitingForRoom(t *testing.T) {
	// In a bubble, synctest.Wait tells when the workers are blocked, and
	// the clock is fake.
	synctest.Test(t, func(t *testing.T) {
		const quiet = 5 * time.Second // within results.wait's 10 s
		ba, bb := newTestBlob(t, 21, 256<<10, 2), newTestBlob(t, 22, 256<<10, 2)
		res := newResults()
		// Room for one chunk of either layer at a time.
		s := newTestScheduler(Options{ChunkSize: 1, Workers: 2, Quiet: quiet, MaxMemory: ba.table.CompressedSize / 2}, res.onDone)
		defer s.Close()
		inFlight := make(chan struct{})
		blobA := &fakeBlob{data: ba.blob, before: stopFirstFetch(inFlight)}
		blobB := &fakeBlob{data: bb.blob}
		la, _ := layerOf("/mnt/a", ba, blobA)
		lb, _ := layerOf("/mnt/b", bb, blobB)
		s.Enqueue(context.Background(), la)
		<-inFlight // a's first chunk holds the budget
		s.Enqueue(context.Background(), lb)
		synctest.Wait() // b's worker waits for room
		before := blobB.fetches()
		if before != 0 {
			t.Fatalf("layer b fetched %d chunks while a's held the budget", before)
		}
		s.Preempt() // a read's fetch starts: a's chunk stops, its room is free
		synctest.Wait()
		during := blobB.fetches()
		if during != 0 {
			t.Errorf("layer b started %d chunks right after the preemption, want none before the quiet period", during)
		}
		for _, key := range []string{"/mnt/a", "/mnt/b"} {
			if err := res.wait(t, key); err != nil {
				t.Fatalf("%s: %v", key, err)
			}
		}
	})
}
