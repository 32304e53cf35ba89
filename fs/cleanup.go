package fs

import (
	"context"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

// layerRef names the data of an unmounted layer, which Release deletes.
type layerRef struct {
	name string // layer digest, the prefix of the span cache's keys
	ztoc digest.Digest
}

// cacheKey is the span cache's key prefix for a layer served with a zTOC
// ("sha256:<layer>/sha256:<ztoc>"): decompressed spans depend on both, so
// two zTOCs of one layer never share cached spans, while every zTOC's spans
// of a layer stay under the layer's digest (for Remove and Pin by layer).
func cacheKey(layer string, ztoc digest.Digest) string {
	return layer + "/" + ztoc.String()
}

// shares tells whether r and other use the same layer data.
func (r layerRef) shares(other layerRef) bool {
	return other.name == r.name || r.ztoc != "" && other.ztoc == r.ztoc
}

// Release tells that the snapshot last served at mountpoint was removed for
// good (its directory is gone): the span cache and zTOC of its layer are
// deleted, unless another snapshot, mounted or to be mounted again, or a
// Mount in progress, uses the same layer digest or zTOC. A layer still
// served there is unmounted first. A mountpoint this FS did not serve since
// it started is nothing to do: the bounded cache evicts unmounted layers
// first anyway.
func (f *FS) Release(ctx context.Context, mountpoint string) error {
	f.mu.Lock()
	_, mounted := f.mounted[mountpoint]
	f.mu.Unlock()
	var err error
	if mounted {
		err = f.Unmount(ctx, mountpoint)
	}
	f.mu.Lock()
	ref, ok := f.unmounted[mountpoint]
	delete(f.unmounted, mountpoint)
	f.mu.Unlock()
	if ok {
		f.release(ctx, ref)
	}
	return err
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

// pin protects the cached spans under key (a layer served with one zTOC)
// from eviction while it is mounted (but as a last resort: they can be
// fetched again) and returns the function undoing it.
func (f *FS) pin(ctx context.Context, key string) (unpin func()) {
	if err := f.cache.Pin(key); err != nil {
		log.G(ctx).WithError(err).Warn("cannot protect the layer's cached spans from eviction")
		return func() {}
	}
	return func() { f.cache.Unpin(key) }
}

// release deletes the span cache and zTOC of the layer m, unless another
// layer, mounted or unmounted but not released, or a Mount in progress, uses
// the same layer digest or zTOC. When other snapshots use the layer with
// other zTOCs only, just the spans and the zTOC of m's zTOC are deleted.
// It runs under f.mu, so a Mount starting after it fetches the zTOC again.
// The SOCI index and the index chosen per image stay: they are small and
// shared by the image's other layers. Failures are logged: the snapshot is
// gone either way, and the bounded cache evicts what is left first.
func (f *FS) release(ctx context.Context, m layerRef) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pending[m.name] > 0 {
		return
	}
	others := make([]layerRef, 0, len(f.mounted)+len(f.unmounted))
	for _, other := range f.mounted {
		others = append(others, layerRef{name: other.name, ztoc: other.ztoc})
	}
	// An unmounted snapshot that stays (after a failed start-up, say) needs
	// them when it is mounted again.
	for _, other := range f.unmounted {
		others = append(others, other)
	}
	prefix := m.name // every zTOC's spans of the layer
	for _, other := range others {
		switch {
		case other.name == m.name && other.ztoc != m.ztoc && m.ztoc != "":
			prefix = cacheKey(m.name, m.ztoc) // the layer stays with another zTOC
		case m.shares(other):
			return
		}
	}
	l := log.G(ctx).WithField("layer", m.name)
	if err := f.cache.Remove(prefix); err != nil {
		l.WithError(err).Warn("cannot delete the cached spans of a removed layer")
	}
	if m.ztoc != "" {
		if err := f.indices.RemoveBlob(m.ztoc); err != nil {
			l.WithError(err).WithField("ztoc", m.ztoc).Warn("cannot delete the zTOC of a removed layer")
		}
	}
	l.Debug("deleted the span cache and zTOC of a removed layer")
}
