package fs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/source"
	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// Mount serves the layer described by labels at mountpoint, read-only,
// loading file data on demand. It returns an error wrapping
// errdefs.ErrNotFound when the layer can't be lazily loaded (no labels, no
// SOCI index, no zTOC for this layer, layer below min_layer_size): the
// snapshotter then has the layer unpacked as usual.
func (f *FS) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	start := time.Now()
	t, err := source.FromLabels(labels)
	if err != nil {
		return fmt.Errorf("lazy layer at %s: %v: %w", mountpoint, err, errdefs.ErrNotFound)
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("layer", t.LayerDigest))
	if f.tooSmall(t.LayerSize) {
		return fmt.Errorf("layer %s: %d bytes, below min_layer_size %d: %w", t.LayerDigest, t.LayerSize, f.opts.MinLayerSize, errdefs.ErrNotFound)
	}
	rctx, cancel := context.WithTimeout(ctx, f.opts.MountTimeout)
	defer cancel()
	l, err := f.resolve(rctx, t)
	if err != nil {
		return err
	}
	// Without a size label (containerd's own pulls set none) the zTOC tells.
	if size := l.Spans.CompressedSize; f.tooSmall(size) {
		l.Close()
		return fmt.Errorf("layer %s: %d bytes, below min_layer_size %d: %w", t.LayerDigest, size, f.opts.MinLayerSize, errdefs.ErrNotFound)
	}
	m, err := f.serve(ctx, mountpoint, t, l)
	if err != nil {
		l.Close()
		return err
	}
	f.mu.Lock()
	old := f.mounted[mountpoint]
	f.mounted[mountpoint] = m
	f.mu.Unlock()
	if old != nil {
		old.spans.Close()
		old.layer.Close()
	}
	log.G(ctx).WithField("entries", len(l.TOC.Entries)).WithField("spans", len(l.Spans.Spans)).
		WithField("took", time.Since(start)).Info("layer mounted lazily")
	return nil
}

// tooSmall reports whether a layer of size bytes is below min_layer_size
// (a size of 0 is unknown).
func (f *FS) tooSmall(size int64) bool {
	return f.opts.MinLayerSize > 0 && size > 0 && size < f.opts.MinLayerSize
}

// resolve finds the image's SOCI index and opens this layer's zTOC.
func (f *FS) resolve(ctx context.Context, t source.Target) (*index.Layer, error) {
	idx, err := f.indices.Find(ctx, t.ImageRef, t.ManifestDigest, t.IndexDigest)
	if err != nil {
		return nil, fmt.Errorf("find SOCI index of %s: %w", t.ImageRef, err)
	}
	l, err := f.indices.Open(ctx, t.ImageRef, idx, t.LayerDigest)
	if errors.Is(err, index.ErrNoZTOC) {
		return nil, fmt.Errorf("layer %s is not in SOCI index %s: %w", t.LayerDigest, idx.Digest, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open zTOC of layer %s: %w", t.LayerDigest, err)
	}
	return l, nil
}

// serve builds the span manager and the FUSE tree of the layer and mounts
// it, replacing a dead mount an earlier daemon may have left there.
func (f *FS) serve(ctx context.Context, mountpoint string, t source.Target, l *index.Layer) (*mountedLayer, error) {
	blob := f.opts.Registry.Blob(t.ImageRef, ocispec.Descriptor{Digest: t.LayerDigest, Size: l.Spans.CompressedSize})
	spans, err := span.New(span.Options{
		Table: l.Spans, Fetcher: blob, Cache: f.cache, Decompressor: l,
		CacheKey: t.LayerDigest.String(), FetchTimeout: f.opts.FetchTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("spans of layer %s: %w", t.LayerDigest, err)
	}
	root, err := layer.NewRoot(l.TOC, spans, layer.Options{DisableXattrs: l.DisableXattrs})
	if err != nil {
		spans.Close()
		return nil, fmt.Errorf("file tree of layer %s: %w", t.LayerDigest, err)
	}
	if err := detach(mountpoint); err != nil {
		spans.Close()
		return nil, err
	}
	server, err := fusefs.Mount(mountpoint, root, layer.MountOptions())
	if err != nil {
		spans.Close()
		return nil, fmt.Errorf("mount layer %s at %s: %w", t.LayerDigest, mountpoint, err)
	}
	return &mountedLayer{server: server, spans: spans, layer: l, name: t.LayerDigest.String()}, nil
}
