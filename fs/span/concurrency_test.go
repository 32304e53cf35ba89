package span

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

func TestCanceledReaderDoesNotCancelSharedFetch(t *testing.T) {
	l := buildLayer(t, 20, []int{5000, 5000}, true)
	gate, started := make(chan struct{}), make(chan struct{}, 1)
	f := &fakeFetcher{blob: l.blob, gate: gate, started: started}
	m := newManager(t, l, f, cache.NewMemory(), nil)

	ctxA, cancelA := context.WithCancel(t.Context())
	errA := make(chan error, 1)
	go func() {
		_, err := m.FetchAt(ctxA, make([]byte, 100), 0)
		errA <- err
	}()
	waitStarted(t, started)

	type result struct {
		p   []byte
		n   int
		err error
	}
	resB := make(chan result, 1)
	go func() {
		p := make([]byte, 100)
		n, err := m.FetchAt(t.Context(), p, 0)
		resB <- result{p, n, err}
	}()

	cancelA()
	select {
	case err := <-errA:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled reader: err = %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("canceled reader did not return promptly")
	}

	close(gate)
	r := <-resB
	if r.n != 100 || r.err != nil || !bytes.Equal(r.p, l.data[:100]) {
		t.Fatalf("other reader: %d, %v", r.n, r.err)
	}
	if got := f.requests(); got != 1 {
		t.Fatalf("requests = %d, want 1", got)
	}
}

func TestFetchTimeout(t *testing.T) {
	for _, ignoreCtx := range []bool{false, true} {
		t.Run(fmt.Sprintf("ignoreCtx=%v", ignoreCtx), func(t *testing.T) {
			l := buildLayer(t, 21, []int{1000}, false)
			gate := make(chan struct{})
			defer close(gate) // release an abandoned fetch
			f := &fakeFetcher{blob: l.blob, gate: gate, ignoreCtx: ignoreCtx}
			m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.FetchTimeout = 100 * time.Millisecond })
			start := time.Now()
			_, err := m.FetchAt(t.Context(), make([]byte, 10), 0)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("FetchAt = %v, want context.DeadlineExceeded", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("FetchAt took %v with a 100ms timeout", d)
			}
			if s, _ := m.Cached(); s != 0 {
				t.Fatalf("Cached = %d after a timeout", s)
			}
		})
	}
}

func TestCloseCancelsInFlightFetch(t *testing.T) {
	l := buildLayer(t, 22, []int{1000}, false)
	gate, started := make(chan struct{}), make(chan struct{}, 1)
	defer close(gate)
	f := &fakeFetcher{blob: l.blob, gate: gate, started: started}
	m := newManager(t, l, f, cache.NewMemory(), nil)
	errc := make(chan error, 1)
	go func() {
		_, err := m.FetchAt(t.Context(), make([]byte, 10), 0)
		errc <- err
	}()
	waitStarted(t, started)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("reader after Close: %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("reader still waiting after Close")
	}
}

func TestConcurrentReaders(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 23))
	sizes := make([]int, 64)
	for i := range sizes {
		sizes[i] = 1 + rng.IntN(8192)
	}
	sizes[10] = 1
	l := buildLayer(t, 23, sizes, true)
	f := &fakeFetcher{blob: l.blob, delay: time.Millisecond}
	m := newManager(t, l, f, cache.NewMemory(), nil)
	size := l.table.UncompressedSize

	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for r := range 32 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 99))
			for range 40 {
				off := rng.Int64N(size + 100)
				p := make([]byte, rng.IntN(20000))
				if err := checkRead(t.Context(), m, l.data, p, off); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, n := range f.fetchesPerSpan(l.table) {
		if n > 1 {
			t.Errorf("span %d fetched %d times", i, n)
		}
	}
}

// checkRead reads p at off and compares with the expected layer bytes.
func checkRead(ctx context.Context, m *Manager, data, p []byte, off int64) error {
	n, err := m.FetchAt(ctx, p, off)
	want := 0
	if off < int64(len(data)) {
		want = min(len(p), len(data)-int(off))
	}
	wantEOF := want < len(p) || off >= int64(len(data))
	switch {
	case n != want:
		return fmt.Errorf("FetchAt(%d, %d) = %d bytes, want %d (err %v)", off, len(p), n, want, err)
	case wantEOF && err != io.EOF, !wantEOF && err != nil:
		return fmt.Errorf("FetchAt(%d, %d): err = %v", off, len(p), err)
	case !bytes.Equal(p[:n], data[off:off+int64(n)]):
		return fmt.Errorf("FetchAt(%d, %d): wrong bytes", off, len(p))
	}
	return nil
}
