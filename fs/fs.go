package fs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/containerd/log"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/fastsoci/soci-snapshotter/fs/background"
	"github.com/fastsoci/soci-snapshotter/fs/cache"
	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/remote"
	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/fs/trace"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

// Options configures an FS.
type Options struct {
	// Root is the directory under which the filesystem keeps its state:
	// index/ (SOCI indices and zTOCs) and cache/ (decompressed spans).
	Root string
	// Registry reaches the registries the images come from.
	Registry *remote.Client
	// V1 and V2 enable SOCI index discovery through the referrers API and
	// through the image manifest's annotation.
	V1, V2 bool
	// MinLayerSize: smaller layers are not lazily loaded (0: all layers).
	MinLayerSize int64
	// FetchTimeout bounds one shared span fetch.
	FetchTimeout time.Duration
	// MountTimeout bounds resolving a layer (index, zTOC) on Mount.
	MountTimeout time.Duration
	// Background configures the fetcher that makes mounted layers fully
	// local; nil: off. Its Observer is set from Metrics.
	Background *background.Options
	// Metrics receives mount, read and background metrics; nil: none.
	Metrics *metrics.Metrics
	// MaxCacheBytes bounds the span cache on disk; 0 is unbounded.
	MaxCacheBytes int64
	// MaxCacheFiles bounds the span cache files kept open for reads; 0
	// takes cache.DefaultMaxOpenFiles.
	MaxCacheFiles int

	// Bounds on remote data ([limits]). MaxDecompressBytes bounds the bytes being
	// decompressed at once by all layers of the FS together; a span longer
	// than that alone is refused (reads of it get EIO). 0: unbounded. The
	// node-wide bound on registry requests is the Registry's own.
	MaxDecompressBytes int64
	// NeighbourBytes is how many compressed bytes on either side of a
	// scattered span miss are fetched (span.Options.Neighbours); 0: none.
	NeighbourBytes int64
	// Bounds on SOCI indices and zTOCs from registries ([limits]; zero
	// takes the default): index entries, zTOC bytes, entries and
	// estimated heap (IndexLimits), and the layer tree's depth.
	IndexLimits  index.Limits
	MaxTreeDepth int
	// ContentSource, if set, is read for SOCI indices and zTOCs before
	// the registry ([content_store] type = "containerd"); nil: none.
	ContentSource index.ContentSource

	// AttrTimeout, EntryTimeout and NegativeTimeout are how long the
	// kernel caches a layer's attributes, name lookups and failed lookups
	// ([fuse]; 0 takes layer.DefaultCacheTimeout, negative is as long as
	// the kernel can).
	AttrTimeout, EntryTimeout, NegativeTimeout time.Duration
	// FuseDebug writes go-fuse's trace of every request into the log at
	// debug ("debug"); LogFuseOperations logs every operation on a layer
	// with its path at debug ([fuse] log_fuse_operations). Both reveal
	// file names.
	FuseDebug, LogFuseOperations bool
	// VerifyRetries is how many more times a span that fails verification
	// is fetched before reads of it fail ([blob]
	// max_span_verification_retries).
	VerifyRetries int
	// Prefetch loads the spans a layer's prefetch artifact (SOCI v2,
	// `soci create --prefetch-file`) lists right after the layer is
	// mounted ([prefetch] enable); off: artifacts are ignored.
	// PrefetchConcurrency bounds the prefetch requests in flight on the
	// node ([prefetch] max_concurrency; 0: only the registry client's
	// own bound).
	Prefetch            bool
	PrefetchConcurrency int
	// Passthrough serves files whose bytes are all in the span cache
	// through FUSE passthrough (a copy of the file handed to the kernel,
	// which then reads it with no READ request) when the kernel accepts
	// it ([fuse] passthrough). Layers then answer every OPEN (no FUSE
	// no_open). PassthroughMaxBytes bounds the copies on disk (0: 1 GiB).
	Passthrough         bool
	PassthroughMaxBytes int64
	// Record, when not nil, records per image the spans demand reads
	// need from its first mount until it is ready, into a trace under
	// <Root>/traces ([prefetch] record; Record.Dir is set here).
	Record *trace.Options
}

// FS mounts remote layers. It is safe for concurrent use.
type FS struct {
	opts    Options
	indices *index.Store
	cache   *cache.Disk
	mu      sync.Mutex
	mounted map[string]*mountedLayer // by mountpoint
	bg      *background.Scheduler    // nil when background fetch is off
	markers background.Markers       // layers whose zTOC was found bad (also when bg is off)
	pending map[string]int           // Mount calls in progress, by layer digest
	// decompress bounds the bytes being decompressed at once, shared by
	// every layer's span manager; nil: unbounded.
	decompress *span.DecompressLimit
	// pendingImages counts the Mount calls in progress by image manifest,
	// so that release keeps the SOCI index they are looking up.
	pendingImages map[digest.Digest]int
	// unmounted are the layers unmounted since, by mountpoint: their data
	// stays until Release says their snapshot is gone.
	unmounted map[string]layerRef
	// prefetchSlots bounds the prefetch requests of all layers; nil: no
	// bound of its own.
	prefetchSlots *span.PrefetchSlots
	// recorder records prefetch traces; nil when off. stopTick ends its
	// ticker.
	recorder *trace.Recorder
	stopTick chan struct{}
	// backing keeps the passthrough copies; nil when passthrough is off.
	// refusedOnce logs the kernel's refusal once.
	backing     *layer.BackingFiles
	refusedOnce sync.Once
}

// mountedLayer is everything that serves one mounted layer.
type mountedLayer struct {
	server *fuse.Server
	spans  *span.Manager
	layer  *index.Layer
	blob   span.Fetcher // the compressed layer blob
	name   string       // layer digest, the prefix of the span cache's keys (see cacheKey)
	ztoc   digest.Digest
	// index and manifest are the SOCI index the layer was found in and
	// the image manifest it was looked up for.
	index, manifest digest.Digest
	unpin           func()
	metrics         *metrics.Layer // nil without metrics
	// stopPrefetch stops the layer's prefetch; nil when none runs.
	stopPrefetch context.CancelFunc
	root         fusefs.InodeEmbedder // the layer's tree
}

// New returns an FS keeping its state under opts.Root.
func New(opts Options) (*FS, error) {
	if opts.Registry == nil {
		return nil, errors.New("fs: no registry client")
	}
	if opts.MountTimeout <= 0 {
		opts.MountTimeout = 30 * time.Second
	}
	indices, err := index.New(index.Options{
		Root: filepath.Join(opts.Root, "index"), Registry: opts.Registry, V1: opts.V1, V2: opts.V2,
		Limits: opts.IndexLimits, ContentSource: opts.ContentSource,
	})
	if err != nil {
		return nil, fmt.Errorf("open index store: %w", err)
	}
	spanCache, err := cache.OpenDisk(filepath.Join(opts.Root, "cache"), cache.DiskOptions{MaxBytes: opts.MaxCacheBytes, MaxOpenFiles: opts.MaxCacheFiles})
	if err != nil {
		indices.Close()
		return nil, fmt.Errorf("open span cache: %w", err)
	}
	stateDir := filepath.Join(opts.Root, "background")
	f := &FS{
		markers: background.NewMarkers(stateDir), opts: opts, indices: indices, cache: spanCache,
		decompress: span.NewDecompressLimit(opts.MaxDecompressBytes),
		mounted:    map[string]*mountedLayer{}, pending: map[string]int{}, unmounted: map[string]layerRef{},
		pendingImages: map[digest.Digest]int{},
		prefetchSlots: span.NewPrefetchSlots(opts.PrefetchConcurrency),
	}
	if opts.Passthrough {
		max := opts.PassthroughMaxBytes
		if max <= 0 {
			max = defaultPassthroughBytes
		}
		f.backing = layer.NewBackingFiles(filepath.Join(opts.Root, "cache"), max)
	}
	if opts.Record != nil {
		ro := *opts.Record
		ro.Dir = filepath.Join(opts.Root, "traces")
		if f.recorder, err = trace.Open(ro); err != nil {
			spanCache.Close()
			indices.Close()
			return nil, fmt.Errorf("open prefetch trace recorder: %w", err)
		}
		f.stopTick = make(chan struct{})
		go tick(f.recorder, f.stopTick)
	}
	if opts.Background != nil {
		bo := *opts.Background
		bo.StateDir = stateDir
		if opts.Metrics != nil {
			bo.Observer = opts.Metrics
		}
		bo.OnBad = f.poison
		f.bg = background.New(bo)
		opts.Metrics.SetBackgroundQueue(f.bg.Queued)
	}
	return f, nil
}

// poison takes every mounted layer served from the zTOC ztoc of layer ld
// out of service once the background walk found the pair bad: their reads
// fail with EIO, their cached spans go (span.Manager.Poison) and so do
// their passthrough copies.
func (f *FS) poison(ld, ztoc digest.Digest, reason error) {
	f.mu.Lock()
	var hit []*mountedLayer
	for _, m := range f.mounted {
		if m.name == ld.String() && m.ztoc == ztoc {
			hit = append(hit, m)
		}
	}
	f.mu.Unlock()
	ctx := log.WithLogger(context.Background(), log.L.WithField("ztoc", ztoc))
	for _, m := range hit {
		m.spans.Poison(ctx, reason)
		layer.PoisonPassthrough(m.root)
	}
}

// Check reports whether the layer at mountpoint is still served by this
// process and answers.
func (f *FS) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	f.mu.Lock()
	_, ok := f.mounted[mountpoint]
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("check layer at %s: not mounted by this process", mountpoint)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mountpoint, &st); err != nil {
		return fmt.Errorf("check layer at %s: %w", mountpoint, err)
	}
	if st.Type != unix.FUSE_SUPER_MAGIC {
		return fmt.Errorf("check layer at %s: no FUSE filesystem mounted there", mountpoint)
	}
	return nil
}

// serving reports whether this FS serves the layer layerDigest at
// mountpoint and the FUSE mount there answers.
func (f *FS) serving(mountpoint, layerDigest string) bool {
	f.mu.Lock()
	m, ok := f.mounted[mountpoint]
	f.mu.Unlock()
	if !ok || m.name != layerDigest {
		return false
	}
	var st unix.Statfs_t
	return unix.Statfs(mountpoint, &st) == nil && st.Type == unix.FUSE_SUPER_MAGIC
}

// Mountpoints lists the mountpoints this FS serves, sorted.
func (f *FS) Mountpoints() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.mounted))
}

// Unmount stops serving the layer at mountpoint and unmounts it. The
// layer's span cache and zTOC stay: the snapshot may be mounted again (after
// a failed start-up or an explicit teardown), and needs no registry then;
// Release deletes them once the snapshot is removed. A mount left by an
// earlier daemon is detached.
func (f *FS) Unmount(ctx context.Context, mountpoint string) error {
	f.mu.Lock()
	m, ok := f.mounted[mountpoint]
	delete(f.mounted, mountpoint)
	if ok {
		f.unmounted[mountpoint] = m.ref()
	}
	f.mu.Unlock()
	if f.bg != nil {
		f.bg.Cancel(mountpoint)
	}
	if !ok {
		return detach(mountpoint)
	}
	return m.close(mountpoint)
}

// Close unmounts every layer this FS serves. Containers still using them
// keep their (detached) mounts until they stop. Close is a shutdown: the
// span cache and zTOCs stay for the next start; the staging directories of
// the cache and the index store go.
func (f *FS) Close() error {
	if f.bg != nil {
		f.bg.Close()
	}
	f.mu.Lock()
	all := f.mounted
	f.mounted = map[string]*mountedLayer{}
	f.mu.Unlock()
	var errs []error
	for mp, m := range all {
		errs = append(errs, m.close(mp))
	}
	if f.backing != nil {
		f.backing.Close()
	}
	if f.recorder != nil {
		close(f.stopTick)
		errs = append(errs, f.recorder.Close())
	}
	// Nothing writes any more: the staging directories can go.
	errs = append(errs, f.indices.Close(), f.cache.Close())
	return errors.Join(errs...)
}

// tickEvery is how often recordings whose window ended are written
// (images that stopped reading before their window ended).
const tickEvery = time.Second

// tick ends the recordings whose window ended, until stop is closed.
func tick(r *trace.Recorder, stop <-chan struct{}) {
	t := time.NewTicker(tickEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			r.Tick()
		case <-stop:
			return
		}
	}
}

// close detaches the layer's mount lazily and frees what serves it. It
// never waits for the FUSE session to end: go-fuse's Server.Unmount waits
// for its read loops, which run as long as anything still holds the mount
// (an overlay of a running container), so a host stopping under running
// containers would hang. The kernel ends the session once the last user
// is gone, or when the process exits.
func (m *mountedLayer) close(mountpoint string) error {
	m.endPrefetch()
	var errs []error
	if err := detach(mountpoint); err != nil {
		errs = append(errs, fmt.Errorf("unmount layer %s: %w", m.name, err))
	}
	layer.ClosePassthrough(m.root)
	errs = append(errs, m.spans.Close(), m.layer.Close())
	m.unpin()
	m.metrics.Close()
	return errors.Join(errs...)
}

// endPrefetch stops the layer's prefetch, if one runs; the span manager's
// Close then cancels its fetches in flight.
func (m *mountedLayer) endPrefetch() {
	if m.stopPrefetch != nil {
		m.stopPrefetch()
	}
}

// detach lazily unmounts whatever is mounted at mountpoint, if anything.
func detach(mountpoint string) error {
	err := unix.Unmount(mountpoint, unix.MNT_DETACH)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("detach %s: %w", mountpoint, err)
}
