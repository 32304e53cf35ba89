package fs

import (
	"context"
	"slices"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/source"
)

// layerRef names the data of an unmounted layer, which Release deletes.
type layerRef struct {
	name string // layer digest, the prefix of the span cache's keys
	ztoc digest.Digest
	// index is the SOCI index the layer was found in, looked up for the
	// image manifest manifest (empty for layers mounted before these were
	// recorded).
	index, manifest digest.Digest
}

func (m *mountedLayer) ref() layerRef {
	return layerRef{name: m.name, ztoc: m.ztoc, index: m.index, manifest: m.manifest}
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

// begin records a Mount of the layer t in progress until the returned
// function is called, so that release keeps the layer's zTOC and cache,
// and its image's SOCI index, while it is being mounted (again).
func (f *FS) begin(t source.Target) (end func()) {
	layerDigest, image := t.LayerDigest.String(), t.ManifestDigest
	f.mu.Lock()
	f.pending[layerDigest]++
	f.pendingImages[image]++
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		if f.pending[layerDigest]--; f.pending[layerDigest] <= 0 {
			delete(f.pending, layerDigest)
		}
		if f.pendingImages[image]--; f.pendingImages[image] <= 0 {
			delete(f.pendingImages, image)
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
// the same layer digest or zTOC; when other snapshots use the layer with
// other zTOCs only, just the spans and the zTOC of m's zTOC are deleted.
// Then it deletes the layer's SOCI index (its blob, the records choosing it,
// its other zTOCs that prefetching brought, its memory), unless another such
// layer was found in it or a Mount for the same image is in progress.
// It runs under f.mu, so a Mount starting after it fetches them again.
// Failures are logged: the snapshot is gone either way, and the bounded
// cache evicts what is left first.
func (f *FS) release(ctx context.Context, m layerRef) {
	f.mu.Lock()
	defer f.mu.Unlock()
	live := make([]layerRef, 0, len(f.mounted)+len(f.unmounted))
	for _, other := range f.mounted {
		live = append(live, other.ref())
	}
	// An unmounted snapshot that stays (after a failed start-up, say) needs
	// them when it is mounted again.
	for _, other := range f.unmounted {
		live = append(live, other)
	}
	l := log.G(ctx).WithField("layer", m.name)
	if prefix, ok := f.unused(m, live); ok {
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
	if m.index == "" || f.pendingImages[m.manifest] > 0 || slices.ContainsFunc(live, func(o layerRef) bool { return o.index == m.index }) {
		return
	}
	inUse := func(z digest.Digest) bool {
		return slices.ContainsFunc(live, func(o layerRef) bool { return o.ztoc == z })
	}
	if err := f.indices.Release(ctx, m.index, inUse); err != nil {
		l.WithError(err).Warn("cannot delete the SOCI index of a removed image")
	}
}

// unused returns the span cache prefix of m's data that neither a live
// layer nor a Mount in progress needs: the whole layer, or only the spans
// of m's zTOC when the layer stays in use with other zTOCs. It returns
// false when all of it is still needed. It runs under f.mu.
func (f *FS) unused(m layerRef, live []layerRef) (string, bool) {
	if f.pending[m.name] > 0 {
		return "", false
	}
	prefix := m.name // every zTOC's spans of the layer
	for _, other := range live {
		switch {
		case other.name == m.name && other.ztoc != m.ztoc && m.ztoc != "":
			prefix = cacheKey(m.name, m.ztoc) // the layer stays with another zTOC
		case m.shares(other):
			return "", false
		}
	}
	return prefix, true
}
