package fs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/fs/background"
	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/source"
	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/fs/trace"
	"github.com/fastsoci/soci-snapshotter/internal/mountctx"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

// Mount serves the layer described by labels at mountpoint, read-only,
// loading file data on demand. It returns an error wrapping
// errdefs.ErrNotFound when the layer can't be lazily loaded (no labels, no
// SOCI index, no zTOC for this layer, layer below min_layer_size): the
// snapshotter then has the layer unpacked as usual.
//
// Mount is idempotent: when this FS already serves the same layer at
// mountpoint and the mount answers, it returns nil and leaves the mount
// alone (a restarted daemon restores its snapshots through Check and Mount,
// and containers may be reading from that mount).
func (f *FS) Mount(ctx context.Context, mountpoint string, labels map[string]string) (err error) {
	start := time.Now()
	var layerDigest string // for the reference's mount series
	served := false        // already served: nothing was mounted
	defer func() {
		switch {
		case served:
		case err == nil:
			f.opts.Metrics.ObserveMount(time.Since(start))
			f.opts.Metrics.ObserveOperation(metrics.OpMount, layerDigest, time.Since(start))
		case !errdefs.IsNotFound(err):
			f.opts.Metrics.Failure(metrics.FailureMount)
		}
	}()
	t, err := source.FromLabels(labels)
	if err != nil {
		return fmt.Errorf("lazy layer at %s: %w: %w", mountpoint, err, errdefs.ErrNotFound)
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("layer", t.LayerDigest))
	layerDigest = t.LayerDigest.String()
	if f.serving(mountpoint, layerDigest) {
		served = true
		log.G(ctx).WithField("mountpoint", mountpoint).Debug("layer already served there; mount left alone")
		return nil
	}
	defer f.begin(t)()
	if f.bg != nil {
		// The walks of layers mounted before yield the link to this
		// mount's zTOC (see background.Scheduler.BeginMount).
		f.bg.BeginMount()
		defer f.bg.EndMount()
	}
	if f.tooSmall(t.LayerSize) {
		return fmt.Errorf("layer %s: %d bytes, below min_layer_size %d: %w", t.LayerDigest, t.LayerSize, f.opts.MinLayerSize, errdefs.ErrNotFound)
	}
	rctx, cancel := context.WithTimeout(ctx, f.opts.MountTimeout)
	defer cancel()
	l, ztoc, idx, err := f.resolve(rctx, t)
	if err != nil {
		return err
	}
	// Without a size label (containerd's own pulls set none) the zTOC tells.
	if size := l.Spans.CompressedSize; f.tooSmall(size) {
		l.Close()
		return fmt.Errorf("layer %s: %d bytes, below min_layer_size %d: %w", t.LayerDigest, size, f.opts.MinLayerSize, errdefs.ErrNotFound)
	}
	m, err := f.serve(ctx, mountpoint, t, l, ztoc)
	if err != nil {
		l.Close()
		return err
	}
	m.index, m.manifest = idx.Digest, t.ManifestDigest
	if art, ok := idx.PrefetchArtifact(t.LayerDigest); ok && f.opts.Prefetch && !mountctx.LocalOnly(ctx) {
		// After the mount, in the background: it never delays it.
		job := prefetchJob{
			ref: t.ImageRef, layer: layerDigest, artifact: art, nspans: len(l.Spans.Spans),
			reader: f.indices, spans: m.spans, slots: f.prefetchSlots, metrics: f.opts.Metrics,
			ztocs: f.indices.ZTOCsLocal(idx.Digest),
		}
		if f.bg != nil {
			job.demand = f.bg
		}
		m.stopPrefetch = startPrefetch(ctx, job, nil)
	}
	f.mu.Lock()
	old := f.mounted[mountpoint]
	f.mounted[mountpoint] = m
	delete(f.unmounted, mountpoint)
	f.mu.Unlock()
	if old != nil {
		old.endPrefetch()
		old.spans.Close()
		old.layer.Close()
		old.unpin()
	}
	// The tree holds what reads need. The zTOC's file table (an Entry per
	// file, about 130 bytes each besides the names the tree shares) is only
	// wanted by the background walk's tar check, which owns it from here:
	// it goes with the walk, or now when there is none.
	files := l.TOC
	l.TOC = layer.TOC{}
	log.G(ctx).WithField("entries", len(files.Entries)).WithField("spans", len(l.Spans.Spans)).
		WithField("took", time.Since(start)).Info("layer mounted lazily")
	if f.bg != nil {
		var blob span.Fetcher = m.blob
		if m.metrics != nil {
			blob = backgroundBlob{Fetcher: m.blob, spans: l.Spans.Spans, o: m.metrics}
		}
		f.bg.Enqueue(ctx, background.Layer{
			Key: mountpoint, Digest: t.LayerDigest, Table: l.Spans, Blob: blob, Spans: m.spans.Loader(),
			ZTOC: ztoc, Files: &files, Gzip: l.Gzip(),
		})
	}
	return nil
}

// readAheadBytes is how far ahead of a sequential reader spans are fetched
// at most (with 4 MiB spans, eight requests in flight); the window grows
// with the run, so sparse reads never trigger it.
const readAheadBytes = 32 << 20

// tooSmall reports whether a layer of size bytes is below min_layer_size
// (a size of 0 is unknown).
func (f *FS) tooSmall(size int64) bool {
	return f.opts.MinLayerSize > 0 && size > 0 && size < f.opts.MinLayerSize
}

// resolve finds the image's SOCI index and opens this layer's zTOC; it
// returns the zTOC's digest and the index too. A ctx marked by
// mountctx.WithLocalOnly (restoring snapshots on start) reads both from
// local disk only and never reaches the registry: a missing piece is an
// error wrapping index.ErrNotLocal.
func (f *FS) resolve(ctx context.Context, t source.Target) (*index.Layer, digest.Digest, *index.Index, error) {
	local := mountctx.LocalOnly(ctx)
	start := time.Now()
	var (
		idx *index.Index
		err error
	)
	if local {
		idx, err = f.indices.FindLocal(ctx, t.ManifestDigest, t.IndexDigest)
	} else {
		idx, err = f.indices.Find(ctx, t.ImageRef, t.ManifestDigest, t.IndexDigest)
	}
	if err != nil {
		return nil, "", nil, fmt.Errorf("find SOCI index of %s: %w", t.ImageRef, err)
	}
	f.opts.Metrics.ObserveIndexFetch(idx.Digest.String(), time.Since(start))
	if !local {
		// The other layers' zTOCs, while this one mounts: the next
		// mounts wait for them, so the walks of the layers mounted
		// before yield to them as to a mount.
		if done := f.indices.Prefetch(ctx, t.ImageRef, idx); done != nil && f.bg != nil {
			f.bg.BeginMount()
			go func() {
				<-done
				f.bg.EndMount()
			}()
		}
	}
	if desc, ok := idx.ZTOC(t.LayerDigest); ok {
		if err := f.refuseBad(t.LayerDigest, desc.Digest); err != nil {
			return nil, "", nil, err
		}
	}
	start = time.Now()
	var l *index.Layer
	if local {
		l, err = f.indices.OpenLocal(ctx, idx, t.LayerDigest)
	} else {
		l, err = f.indices.Open(ctx, t.ImageRef, idx, t.LayerDigest)
	}
	if err == nil {
		f.opts.Metrics.ObserveOperation(metrics.OpZtocUnmarshal, t.LayerDigest.String(), time.Since(start))
	}
	if errors.Is(err, index.ErrNoZTOC) {
		return nil, "", nil, fmt.Errorf("layer %s is not in SOCI index %s: %w", t.LayerDigest, idx.Digest, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, "", nil, fmt.Errorf("open zTOC of layer %s: %w", t.LayerDigest, err)
	}
	desc, _ := idx.ZTOC(t.LayerDigest)
	return l, desc.Digest, idx, nil
}

// refuseBad returns an error when the background check found the zTOC
// ztoc to contradict layer: the mount fails (not as "not found", so the
// fallback is logged as a warning) and the snapshotter falls back to a normal
// unpack. The error is also a failed precondition, so that restoring the
// snapshots of such a layer at start-up skips them instead of failing.
func (f *FS) refuseBad(layer, ztoc digest.Digest) error {
	if err := f.markers.Bad(layer, ztoc); err != nil {
		return fmt.Errorf("refuse to mount layer %s lazily: %w: %w", layer, err, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// serve builds the span manager and the FUSE tree of the layer and mounts
// it, replacing a dead mount an earlier daemon may have left there.
func (f *FS) serve(ctx context.Context, mountpoint string, t source.Target, l *index.Layer, ztoc digest.Digest) (*mountedLayer, error) {
	if err := ztoc.Validate(); err != nil {
		return nil, fmt.Errorf("spans of layer %s: zTOC digest %q: %w", t.LayerDigest, ztoc, err)
	}
	var blob span.Fetcher = f.opts.Registry.Blob(t.ImageRef, ocispec.Descriptor{Digest: t.LayerDigest, Size: l.Spans.CompressedSize})
	// The layer's metrics handle (nil without metrics) sees its reads,
	// fetches and FUSE requests.
	lm := f.opts.Metrics.Layer(t.LayerDigest.String(), mountpoint, t.ManifestDigest.String(), l.Spans.CompressedSize)
	if lm != nil {
		blob = observedBlob{Fetcher: blob, o: lm}
	}
	so := f.spanOptions(t, l, ztoc, blob)
	if lm != nil {
		so.Observer = lm
	}
	var rec *trace.LayerRecorder
	if f.recorder != nil && !mountctx.LocalOnly(ctx) {
		// Restores on start are not a container starting: not recorded.
		rec = f.recorder.Layer(ctx, t.ManifestDigest, t.LayerDigest, ztoc, len(l.Spans.Spans))
	}
	if rec != nil {
		so.Tracer = rec
	}
	spans, err := span.New(so)
	if err != nil {
		lm.Close()
		return nil, fmt.Errorf("spans of layer %s: %w", t.LayerDigest, err)
	}
	start := time.Now()
	lo := layer.Options{DisableXattrs: l.DisableXattrs, MaxDepth: f.opts.MaxTreeDepth}
	if f.opts.LogFuseOperations {
		lo.OperationLog = log.G(ctx)
	}
	if rec != nil && f.recorder.WantsOpens() {
		lo.OnOpen = rec.Opened
	}
	lo.Passthrough = f.passthrough(spans, l.Spans)
	if rec == nil {
		lo.Local = localSpans{l: spans.Loader(), t: l.Spans}
	}
	root, err := layer.NewRoot(l.TOC, spans, lo)
	if err != nil {
		spans.Close()
		lm.Close()
		return nil, fmt.Errorf("file tree of layer %s: %w", t.LayerDigest, err)
	}
	f.opts.Metrics.ObserveOperation(metrics.OpInitMetadataStore, t.LayerDigest.String(), time.Since(start))
	if err := detach(mountpoint); err != nil {
		spans.Close()
		lm.Close()
		return nil, err
	}
	key := cacheKey(t.LayerDigest.String(), ztoc)
	unpin := f.pin(ctx, key)
	start = time.Now()
	server, err := mountFUSE(mountpoint, root, layer.MountOptions(f.mountConfig(ctx)), lm)
	if err != nil {
		spans.Close()
		unpin()
		lm.Close()
		return nil, fmt.Errorf("mount layer %s at %s: %w", t.LayerDigest, mountpoint, err)
	}
	f.opts.Metrics.ObserveOperation(metrics.OpFuseMount, t.LayerDigest.String(), time.Since(start))
	_ = layer.ProbePassthrough(root, server) // a refusal is logged and counted by Passthrough.Refused
	return &mountedLayer{server: server, spans: spans, layer: l, blob: blob, name: t.LayerDigest.String(), ztoc: ztoc, unpin: unpin, metrics: lm, root: root}, nil
}

// mountFUSE mounts root at mountpoint as fusefs.Mount does, with the
// requests observed by o when it is not nil.
func mountFUSE(mountpoint string, root fusefs.InodeEmbedder, opts *fusefs.Options, o *metrics.Layer) (*fuse.Server, error) {
	if o == nil {
		return fusefs.Mount(mountpoint, root, opts)
	}
	raw := observedFUSE{RawFileSystem: fusefs.NewNodeFS(root, opts), o: o}
	server, err := fuse.NewServer(raw, mountpoint, &opts.MountOptions)
	if err != nil {
		return nil, err
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		return nil, err
	}
	return server, nil
}

// mountConfig is how layers are mounted: the [fuse] cache timeouts, and
// go-fuse's trace into ctx's log when asked for.
func (f *FS) mountConfig(ctx context.Context) layer.MountConfig {
	mc := layer.MountConfig{
		AttrTimeout: f.opts.AttrTimeout, EntryTimeout: f.opts.EntryTimeout, NegativeTimeout: f.opts.NegativeTimeout,
	}
	if f.opts.FuseDebug {
		mc.DebugLog = log.G(ctx)
	}
	return mc
}

// spanOptions configures the span manager of a layer served with the zTOC
// ztoc. Its spans are cached under the layer and zTOC digests: the
// decompressed bytes depend on the zTOC's checkpoint windows, which the span
// digests do not cover, so a zTOC must never read spans another zTOC of
// the layer produced.
func (f *FS) spanOptions(t source.Target, l *index.Layer, ztoc digest.Digest, blob span.Fetcher) span.Options {
	so := span.Options{
		Table: l.Spans, Fetcher: blob, Cache: f.cache, Decompressor: l,
		CacheKey: cacheKey(t.LayerDigest.String(), ztoc), FetchTimeout: f.opts.FetchTimeout,
		Limit: f.decompress, VerifyRetries: f.opts.VerifyRetries,
		// The background walk hashes the whole blob; reads keep what they
		// fetched so that it need not fetch it twice.
		KeepCompressed: f.bg != nil,
		// A container reading files in order (a program loading its
		// tree, a copy) stalls on every span miss: fetch ahead of it,
		// in parallel requests since links are often limited per
		// connection. Sparse reads never start it (see span.Options).
		ReadAhead: readAheadBytes,
		// A program loading its modules one after another misses at
		// scattered places; once it has, fetch around each miss.
		Neighbours: f.opts.NeighbourBytes,
		// A read waiting for a span gets it over parallel connections.
		SplitRequest: 1 << 20,
	}
	if f.opts.Metrics != nil {
		so.Observer = f.opts.Metrics // serve sets the layer's own
	}
	if f.bg != nil {
		so.Demand = f.bg
	}
	return so
}
