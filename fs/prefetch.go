package fs

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

// What a layer's prefetch needs from the index store (index.Store) and
// from the layer's span manager (span.Manager).
type (
	artifactReader interface {
		PrefetchSpans(ctx context.Context, ref string, desc ocispec.Descriptor, nspans int) ([]int, error)
	}
	spanPrefetcher interface {
		Prefetch(ctx context.Context, idx []int, slots *span.PrefetchSlots) (span.PrefetchResult, error)
	}
)

// prefetchJob is the prefetch of one mounted layer: its artifact, then
// the spans it lists.
type prefetchJob struct {
	ref      string
	layer    string
	artifact ocispec.Descriptor
	nspans   int
	reader   artifactReader
	spans    spanPrefetcher
	slots    *span.PrefetchSlots
	metrics  *metrics.Metrics
	// demand, when not nil (the background scheduler), is told while
	// the job runs, as for a read waiting for the registry: the walks of
	// the node start no chunk until every prefetch has ended and their
	// quiet time passed, so they never share the link with the spans the
	// image's containers were recorded to need first.
	demand span.Demand
	// ztocs, when not nil, is closed once the image's zTOC downloads
	// have ended (index.Store.ZTOCsLocal): the spans are fetched after
	// them, so that they do not delay the mounts of the next layers.
	ztocs <-chan struct{}
}

// startPrefetch runs job in the background, detached from the mount's
// cancellation (the mount has returned by then) and stopped by the returned
// func (the layer's unmount); done, when not nil, is closed when it ends.
func startPrefetch(ctx context.Context, job prefetchJob, done chan<- struct{}) context.CancelFunc {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		if done != nil {
			defer close(done)
		}
		job.run(ctx)
	}()
	return cancel
}

// run fetches the artifact and loads its spans, logging the outcome. It
// is best effort: a failure leaves the spans to demand reads. A panic on
// the artifact's data is logged, not raised.
func (j prefetchJob) run(ctx context.Context) {
	lg := log.G(ctx).WithField("prefetch", j.artifact.Digest)
	defer func() {
		if r := recover(); r != nil {
			lg.WithField("panic", r).WithField("stack", string(debug.Stack())).Error("prefetch panicked; reads will fetch its spans")
		}
	}()
	if j.demand != nil {
		j.demand.BeginDemand()
		defer j.demand.EndDemand()
	}
	start := time.Now()
	idx, err := j.reader.PrefetchSpans(ctx, j.ref, j.artifact, j.nspans)
	if err != nil {
		if ctx.Err() == nil {
			lg.WithError(err).Warn("cannot read the layer's prefetch artifact; reads will fetch its spans")
		}
		return
	}
	if len(idx) == 0 {
		lg.Debug("prefetch artifact lists no spans")
		return
	}
	if j.ztocs != nil {
		select {
		case <-j.ztocs:
		case <-ctx.Done():
			lg.Debug("prefetch stopped: layer unmounted")
			return
		}
	}
	res, err := j.spans.Prefetch(ctx, idx, j.slots)
	j.metrics.Prefetched(res.Spans, res.Bytes)
	lg = lg.WithField("spans", len(idx)).WithField("fetched", res.Spans).WithField("bytes", res.Bytes).
		WithField("requests", res.Requests).WithField("joined", res.Joined).WithField("failed", res.Failed).
		WithField("took", time.Since(start))
	switch {
	case ctx.Err() != nil:
		lg.Debug("prefetch stopped: layer unmounted")
	case err != nil:
		lg.WithError(fmt.Errorf("prefetch: %w", err)).Warn("prefetch stopped")
	case res.Failed > 0:
		lg.Warn("prefetch done; some spans failed to load and are left to reads")
	default:
		lg.Info("prefetch done")
	}
}
