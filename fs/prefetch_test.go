package fs

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

type fakeArtifacts struct {
	spans []int
	err   error
	asked chan int // receives nspans
}

func (a fakeArtifacts) PrefetchSpans(ctx context.Context, ref string, desc ocispec.Descriptor, nspans int) ([]int, error) {
	if a.asked != nil {
		a.asked <- nspans
	}
	return a.spans, a.err
}

// blockingSpans records the spans asked for and, when block, waits for the
// prefetch's ctx to end.
type blockingSpans struct {
	got   chan []int
	block bool
}

func (s blockingSpans) Prefetch(ctx context.Context, idx []int, _ *span.PrefetchSlots) (span.PrefetchResult, error) {
	s.got <- idx
	if s.block {
		<-ctx.Done()
		return span.PrefetchResult{Spans: 1, Bytes: 10}, ctx.Err()
	}
	return span.PrefetchResult{Spans: len(idx), Bytes: 100 * int64(len(idx)), Requests: 1}, nil
}

func testJob(r artifactReader, s spanPrefetcher, m *metrics.Metrics) prefetchJob {
	return prefetchJob{ref: "example.com/x:1", layer: "sha256:l", nspans: 9, reader: r, spans: s, metrics: m,
		artifact: ocispec.Descriptor{Digest: digest.FromString("artifact")}}
}

// TestPrefetchJob: the artifact's spans go to the span manager and are
// counted; a bad artifact prefetches nothing.
func TestPrefetchJob(t *testing.T) {
	m := metrics.New()
	asked := make(chan int, 1)
	s := blockingSpans{got: make(chan []int, 1)}
	done := make(chan struct{})
	startPrefetch(t.Context(), testJob(fakeArtifacts{spans: []int{1, 2, 5}, asked: asked}, s, m), done)
	<-done
	if n := <-asked; n != 9 {
		t.Errorf("artifact read for %d spans, want 9", n)
	}
	if got := <-s.got; !slices.Equal(got, []int{1, 2, 5}) {
		t.Errorf("spans prefetched = %v", got)
	}
	if spans, bytes := counter(t, m, "soci_prefetch_spans_total"), counter(t, m, "soci_prefetch_bytes_total"); spans != 3 || bytes != 300 {
		t.Errorf("metrics: %v spans, %v bytes prefetched; want 3, 300", spans, bytes)
	}

	for _, r := range []fakeArtifacts{{err: errors.New("invalid prefetch artifact")}, {spans: nil}} {
		done := make(chan struct{})
		startPrefetch(t.Context(), testJob(r, s, nil), done)
		<-done
		select {
		case got := <-s.got:
			t.Errorf("artifact %+v: spans %v prefetched", r, got)
		default:
		}
	}
}

// TestPrefetchStops: the func startPrefetch returns (called on unmount)
// ends a prefetch in progress; the mount's own context ending does not.
func TestPrefetchStops(t *testing.T) {
	s := blockingSpans{got: make(chan []int, 1), block: true}
	mountCtx, mountDone := context.WithCancel(t.Context())
	done := make(chan struct{})
	stop := startPrefetch(mountCtx, testJob(fakeArtifacts{spans: []int{0}}, s, nil), done)
	<-s.got
	mountDone() // the Mount call returned
	select {
	case <-done:
		t.Fatal("prefetch ended with the mount call's context")
	default:
	}
	stop()
	<-done
}

// countingDemand counts BeginDemand and EndDemand calls.
type countingDemand struct {
	mu         sync.Mutex
	begun, end int
}

func (d *countingDemand) BeginDemand() { d.mu.Lock(); d.begun++; d.mu.Unlock() }
func (d *countingDemand) EndDemand()   { d.mu.Lock(); d.end++; d.mu.Unlock() }

func (d *countingDemand) counts() (begun, end int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.begun, d.end
}

// panickingSpans panics when asked to prefetch.
type panickingSpans struct{}

func (panickingSpans) Prefetch(context.Context, []int, *span.PrefetchSlots) (span.PrefetchResult, error) {
	panic("bad artifact data")
}

// TestPrefetchHoldsBackground: a running prefetch is demand for the
// background scheduler from before its artifact is read until it ends,
// however it ends (done, stopped, failed, panicked), so the walks wait for it.
func TestPrefetchHoldsBackground(t *testing.T) {
	d := &countingDemand{}
	s := blockingSpans{got: make(chan []int, 1), block: true}
	job := testJob(fakeArtifacts{spans: []int{0, 3}}, s, nil)
	job.demand = d
	done := make(chan struct{})
	stop := startPrefetch(t.Context(), job, done)
	<-s.got // the spans are being loaded
	if begun, end := d.counts(); begun != 1 || end != 0 {
		t.Fatalf("while prefetching: %d demands begun, %d ended; want 1, 0", begun, end)
	}
	stop()
	<-done
	if begun, end := d.counts(); begun != 1 || end != 1 {
		t.Fatalf("after the prefetch stopped: %d demands begun, %d ended; want 1, 1", begun, end)
	}

	asked := make(chan int, 1)
	for name, j := range map[string]prefetchJob{
		"done":     testJob(fakeArtifacts{spans: []int{1}}, blockingSpans{got: make(chan []int, 1)}, nil),
		"failed":   testJob(fakeArtifacts{err: errors.New("artifact unreachable"), asked: asked}, s, nil),
		"panicked": testJob(fakeArtifacts{spans: []int{2}}, panickingSpans{}, nil),
	} {
		d := &countingDemand{}
		j.demand = d
		done := make(chan struct{})
		startPrefetch(t.Context(), j, done)
		<-done
		if begun, end := d.counts(); begun != 1 || end != 1 {
			t.Errorf("prefetch %s: %d demands begun, %d ended; want 1, 1", name, begun, end)
		}
	}
	if got := <-asked; got != 9 {
		t.Errorf("failed artifact read for %d spans, want 9", got)
	}
}

// counter is the value of the counter name in m.
func counter(t *testing.T, m *metrics.Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestPrefetchAfterZTOCs: the spans are fetched only once the image's zTOC
// downloads have ended (the next layers' mounts wait for those); an
// unmount meanwhile ends the job without fetching.
func TestPrefetchAfterZTOCs(t *testing.T) {
	// In a bubble, synctest.Wait tells when the job is blocked.
	synctest.Test(t, func(t *testing.T) {
		s := blockingSpans{got: make(chan []int, 1)}
		ztocs := make(chan struct{})
		job := testJob(fakeArtifacts{spans: []int{3}}, s, nil)
		job.ztocs = ztocs
		done := make(chan struct{})
		startPrefetch(t.Context(), job, done)
		synctest.Wait()
		select {
		case got := <-s.got:
			t.Fatalf("spans %v prefetched while the zTOCs were downloading", got)
		case <-done:
			t.Fatal("prefetch ended before the zTOCs were local")
		default:
		}
		close(ztocs)
		<-done
		if got := <-s.got; !slices.Equal(got, []int{3}) {
			t.Errorf("spans prefetched = %v, want [3]", got)
		}

		job.ztocs = make(chan struct{}) // never closed
		done = make(chan struct{})
		stop := startPrefetch(t.Context(), job, done)
		synctest.Wait()
		stop() // unmounted
		<-done
		select {
		case got := <-s.got:
			t.Errorf("spans %v prefetched after the unmount", got)
		default:
		}
	})
}
