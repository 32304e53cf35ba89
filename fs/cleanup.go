package fs

import (
	"context"
	"errors"
	"os"
	"sync"
	"time"

	"github.com/containerd/log"
)

// How often and how long releaseWhenGone looks for the mountpoint to go.
const (
	releasePoll = 50 * time.Millisecond
	releaseWait = time.Minute
)

// releases are the deletions waiting for their snapshot directory to go.
type releases struct {
	life   context.Context // canceled by Close: nothing more is deleted
	stop   context.CancelFunc
	wg     sync.WaitGroup
	closed bool // guarded by FS.mu
}

// releaseWhenGone deletes the data of the unmounted layer m (see release)
// once its mountpoint is gone, in the background. Unmount is called both for
// a removed snapshot (the snapshotter then deletes the snapshot directory,
// mountpoint included) and for layers whose snapshots stay (a failed
// start-up, an explicit teardown): those must keep their zTOC so that the
// next start needs no registry. A mountpoint still there after releaseWait
// keeps the data; the bounded cache evicts unmounted layers first anyway.
func (f *FS) releaseWhenGone(ctx context.Context, m *mountedLayer, mountpoint string) {
	f.mu.Lock()
	if f.rel.closed {
		f.mu.Unlock()
		return
	}
	f.rel.wg.Add(1)
	f.mu.Unlock()
	ctx = context.WithoutCancel(ctx)
	go func() {
		defer f.rel.wg.Done()
		tick := time.NewTicker(releasePoll)
		defer tick.Stop()
		deadline := time.After(releaseWait)
		for f.rel.life.Err() == nil {
			if _, err := os.Lstat(mountpoint); errors.Is(err, os.ErrNotExist) {
				f.release(ctx, m)
				return
			}
			select {
			case <-f.rel.life.Done():
				return
			case <-deadline:
				log.G(ctx).WithField("layer", m.name).WithField("mountpoint", mountpoint).
					Debug("unmounted layer's snapshot directory stays; keeping its zTOC and cached spans")
				return
			case <-tick.C:
			}
		}
	}()
}

// stopReleases cancels the pending deletions and waits for them: a
// shutdown deletes nothing.
func (f *FS) stopReleases() {
	f.mu.Lock()
	f.rel.closed = true
	f.mu.Unlock()
	f.rel.stop()
	f.rel.wg.Wait()
}

// begin records a Mount of the layer in progress until the returned
// function is called, so that release keeps the layer's zTOC and cache
// while it is being mounted again.
func (f *FS) begin(layerDigest string) (end func()) {
	f.mu.Lock()
	f.pending[layerDigest]++
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		if f.pending[layerDigest]--; f.pending[layerDigest] <= 0 {
			delete(f.pending, layerDigest)
		}
		f.mu.Unlock()
	}
}

// pin protects the layer's cached spans from eviction while it is mounted
// (but as a last resort: they can be fetched again) and returns the function
// undoing it.
func (f *FS) pin(ctx context.Context, layerDigest string) (unpin func()) {
	if err := f.cache.Pin(layerDigest); err != nil {
		log.G(ctx).WithError(err).Warn("cannot protect the layer's cached spans from eviction")
		return func() {}
	}
	return func() { f.cache.Unpin(layerDigest) }
}

// release deletes the span cache and zTOC of a layer whose snapshot was
// removed, unless another mounted layer, or a Mount in progress, uses the
// same layer digest or zTOC. It runs under f.mu, so a Mount starting after
// it fetches the zTOC again. The SOCI index and the index chosen per image
// stay: they are small and shared by the image's other layers. Failures are
// logged: the layer is gone either way, and the bounded cache evicts what is
// left first.
func (f *FS) release(ctx context.Context, m *mountedLayer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pending[m.name] > 0 {
		return
	}
	for _, other := range f.mounted {
		if other.name == m.name || m.ztoc != "" && other.ztoc == m.ztoc {
			return
		}
	}
	l := log.G(ctx).WithField("layer", m.name)
	if err := f.cache.Remove(m.name); err != nil {
		l.WithError(err).Warn("cannot delete the cached spans of a removed layer")
	}
	if m.ztoc != "" {
		if err := f.indices.RemoveBlob(m.ztoc); err != nil {
			l.WithError(err).WithField("ztoc", m.ztoc).Warn("cannot delete the zTOC of a removed layer")
		}
	}
	l.Debug("deleted the span cache and zTOC of a removed layer")
}
