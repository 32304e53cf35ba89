// Package pull is parallel pull and unpack ([pull_modes.parallel_pull_unpack])
// for layers the snapshotter does not serve lazily: it downloads a layer's
// blob in concurrent chunked range requests (fs/chunkfetch), unpacks it
// while it arrives into a staging directory (fs/layerapply), checks the
// layer digest and the diffID, and moves the result into the snapshot's
// directory. The first layer asked of an image starts the image's later
// layers too, so that they download and unpack concurrently (bounded per
// image and per node) before containerd asks for them.
//
// Staging lives in one directory per process under Options.StagingDir
// (internal/staging): a crash leaves only a staging directory of a dead
// process, which the next start deletes.
package pull

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sys/unix"

	"github.com/fastsoci/soci-snapshotter/fs/chunkfetch"
	"github.com/fastsoci/soci-snapshotter/fs/layerapply"
	"github.com/fastsoci/soci-snapshotter/internal/crash"
	"github.com/fastsoci/soci-snapshotter/internal/staging"
)

// Registry is the registry access the puller needs (remote.Client, through
// an adapter).
type Registry interface {
	// FetchManifest returns the manifest dgst of ref's repository, digest
	// checked and size bounded.
	FetchManifest(ctx context.Context, ref string, dgst digest.Digest) ([]byte, string, error)
	// Blob reads ranges of the blob desc of ref's repository.
	Blob(ref string, desc ocispec.Descriptor) chunkfetch.RangeReader
}

// Defaults.
const (
	// DefaultRequestSize is the largest range request, and so the buffer
	// each download in flight holds.
	DefaultRequestSize = 4 << 20
	// DefaultKeepFor is how long a layer unpacked ahead of containerd's
	// Prepare waits for it before it is deleted.
	DefaultKeepFor = 10 * time.Minute
	// MaxLayers bounds the layers of a manifest.
	MaxLayers = 1024
	// MaxLayerSize bounds a layer descriptor's size.
	MaxLayerSize = 1 << 40
)

// Options configure a Puller. For the four limits, zero or less is no
// limit.
type Options struct {
	Registry Registry
	// StagingDir is the parent of the process's staging directory; it
	// must be on the filesystem of the snapshots.
	StagingDir string
	// ChunkSize is the part of a blob one download fetches; <= 0: the
	// whole blob.
	ChunkSize int64
	// RequestSize bounds one range request (DefaultRequestSize if 0).
	RequestSize int
	// MaxDownloads, MaxDownloadsPerImage bound the chunks downloading at
	// once, on the node and for one image.
	MaxDownloads, MaxDownloadsPerImage int64
	// MaxUnpacks, MaxUnpacksPerImage bound the layers unpacking at once.
	MaxUnpacks, MaxUnpacksPerImage int64
	// ReadAhead starts the image's later layers at the first Pull of one
	// of its layers.
	ReadAhead bool
	// Apply tunes the unpack (external decompressors).
	Apply layerapply.Options
	// KeepFor is how long a layer done ahead waits to be claimed
	// (DefaultKeepFor if 0).
	KeepFor time.Duration
	// AfterFunc schedules f after d (time.AfterFunc if nil); tests inject
	// their clock here.
	AfterFunc func(d time.Duration, f func()) Timer
	// Store, when not nil, keeps every layer blob once it is downloaded
	// and checked (discard_unpacked_layers = false); nil discards them.
	Store BlobStore
	// Spans, when not nil, gives the zTOC of a layer whose image has a
	// SOCI index: its spans are then inflated on InflateWorkers cores
	// (at least 2, else one stream).
	Spans          SpanSource
	InflateWorkers int
	// ObserveInflate, when not nil, is told of every layer inflated on
	// several cores: ok, or redone in one stream (its output was not the
	// layer's).
	ObserveInflate func(ok bool)
	// Observe, when not nil, is told of every layer that finished
	// (unpacked and checked, or failed).
	Observe func(ok bool, bytes int64, took time.Duration)
}

// BlobStore keeps layer blobs (containerd's content store). ctx carries the
// containerd namespace of the Prepare that started the image.
type BlobStore interface {
	WriteBlob(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error
}

// Timer is a scheduled call that can be stopped.
type Timer interface{ Stop() bool }

// Puller runs parallel pulls. It is safe for concurrent use.
type Puller struct {
	opts    Options
	staging *staging.Dir
	dl, up  *semaphore.Weighted // node-wide; nil: unbounded
	bufs    sync.Pool

	mu     sync.Mutex
	images map[imageKey]*image
	closed bool
}

// New opens the puller's staging directory (deleting what dead processes
// left under opts.StagingDir).
func New(opts Options) (*Puller, error) {
	if opts.Registry == nil || opts.StagingDir == "" {
		return nil, fmt.Errorf("new puller: registry and staging directory are required: %w", errdefs.ErrInvalidArgument)
	}
	if opts.RequestSize <= 0 {
		opts.RequestSize = DefaultRequestSize
	}
	if opts.KeepFor <= 0 {
		opts.KeepFor = DefaultKeepFor
	}
	if opts.AfterFunc == nil {
		opts.AfterFunc = func(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }
	}
	st, err := staging.Open(opts.StagingDir)
	if err != nil {
		return nil, fmt.Errorf("new puller: %w", err)
	}
	p := &Puller{opts: opts, staging: st, dl: weighted(opts.MaxDownloads), up: weighted(opts.MaxUnpacks), images: map[imageKey]*image{}}
	size := opts.RequestSize
	p.bufs.New = func() any { b := make([]byte, size); return &b }
	return p, nil
}

func weighted(n int64) *semaphore.Weighted {
	if n <= 0 {
		return nil
	}
	return semaphore.NewWeighted(n)
}

// Close stops every pull in flight and deletes the staging directory.
func (p *Puller) Close() error {
	p.mu.Lock()
	p.closed = true
	imgs := p.images
	p.images = map[imageKey]*image{}
	p.mu.Unlock()
	for _, img := range imgs {
		img.stop(errors.New("puller closed"))
	}
	for _, img := range imgs {
		img.wg.Wait()
	}
	return p.staging.Close()
}

// target is what the labels of a Prepare name.
type target struct {
	ref      string
	manifest digest.Digest
	layer    digest.Digest
}

func parseLabels(labels map[string]string) (target, error) {
	t := target{ref: labels[snapshotters.TargetRefLabel]}
	if t.ref == "" {
		return t, fmt.Errorf("no image reference label: %w", errdefs.ErrNotFound)
	}
	var err error
	if t.manifest, err = digest.Parse(labels[snapshotters.TargetManifestDigestLabel]); err != nil {
		return t, fmt.Errorf("manifest digest label: %v: %w", err, errdefs.ErrNotFound)
	}
	if t.layer, err = digest.Parse(labels[snapshotters.TargetLayerDigestLabel]); err != nil {
		return t, fmt.Errorf("layer digest label: %v: %w", err, errdefs.ErrNotFound)
	}
	return t, nil
}

// Pull unpacks the layer the labels of a Prepare name into dir, an empty
// directory that the result replaces, after checking that its diffID on
// top of parent (the parent's chain ID; "" for a base layer) gives chainID,
// the chain ID containerd asked for. lowers are the directories of the
// layers below, nearest first: directories the layer's tar creates only
// implicitly take their attributes from there, as in containerd's unpack. An error of class NotFound says the
// layer is not for parallel pull (labels missing, a layer type it does not
// handle): the caller may let containerd unpack it. Any other error is the
// layer failing (its digest, its diffID, the registry) and names the
// layer.
func (p *Puller) Pull(ctx context.Context, dir, parent, chainID string, lowers []string, labels map[string]string) error {
	t, err := parseLabels(labels)
	if err != nil {
		return err
	}
	want, err := digest.Parse(chainID)
	if err != nil {
		return fmt.Errorf("chain ID %q is not a digest, so the diffID cannot be checked: %w", chainID, errdefs.ErrNotFound)
	}
	var parentChain digest.Digest
	if parent != "" {
		if parentChain, err = digest.Parse(parent); err != nil {
			return fmt.Errorf("parent %q is not a chain ID, so the diffID cannot be checked: %w", parent, errdefs.ErrNotFound)
		}
	}
	j, err := p.claim(ctx, t)
	if err != nil {
		return fmt.Errorf("parallel pull of layer %s of %s: %w", t.layer, t.ref, err)
	}
	select {
	case <-j.done:
		defer j.remove(ctx)
	case <-ctx.Done():
		go j.remove(context.WithoutCancel(ctx))
		return fmt.Errorf("parallel pull of layer %s of %s: %w", t.layer, t.ref, context.Cause(ctx))
	}
	if j.err != nil {
		return fmt.Errorf("parallel pull of layer %s of %s: %w", t.layer, t.ref, j.err)
	}
	got := j.diffID
	if parent != "" {
		got = identity.ChainID([]digest.Digest{parentChain, j.diffID})
	}
	if got != want {
		return fmt.Errorf("parallel pull of layer %s of %s: diffID %s on parent %q gives chain ID %s, containerd asked for %s: %w",
			t.layer, t.ref, j.diffID, parent, got, want, layerapply.ErrDiffID)
	}
	if err := layerapply.InheritDirs(j.fsDir(), j.implicit, lowers); err != nil {
		return fmt.Errorf("parallel pull of layer %s of %s: %w", t.layer, t.ref, err)
	}
	// rename(2) replaces an empty directory in one step (os.Rename
	// refuses any existing directory).
	if err := unix.Rename(j.fsDir(), dir); err != nil {
		return fmt.Errorf("parallel pull of layer %s of %s: move it into the snapshot: %w", t.layer, t.ref, err)
	}
	return nil
}

// claim returns the job of t's layer, starting it (and, with ReadAhead,
// the image's later layers) if needed. The caller owns the job: nobody
// else claims it.
func (p *Puller) claim(ctx context.Context, t target) (*job, error) {
	img, err := p.image(ctx, t)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	idx := -1
	for i, l := range img.layers {
		if l.Digest == t.layer {
			idx = i
			break
		}
	}
	if idx < 0 {
		return nil, fmt.Errorf("layer not in manifest %s: %w", t.manifest, errdefs.ErrNotFound)
	}
	if err := supported(img.layers[idx]); err != nil {
		return nil, err
	}
	j := img.jobs[t.layer]
	if j == nil {
		if p.closed || img.ctx.Err() != nil {
			return nil, fmt.Errorf("pull of the image stopped: %w", context.Cause(img.ctx))
		}
		last := idx
		if p.opts.ReadAhead {
			last = len(img.layers) - 1
		}
		for i := idx; i <= last; i++ {
			l := img.layers[i]
			if img.jobs[l.Digest] != nil || supported(l) != nil {
				continue
			}
			img.jobs[l.Digest] = p.start(img, l)
		}
		j = img.jobs[t.layer]
	}
	delete(img.jobs, t.layer)
	if j.expiry != nil {
		j.expiry.Stop()
	}
	if len(img.jobs) == 0 {
		p.forget(img)
	}
	return j, nil
}

// supported tells whether a layer is one parallel pull handles: a tar,
// plain, gzip or zstd, of a sane size. Others (foreign layers) are left to
// containerd.
func supported(l ocispec.Descriptor) error {
	if !images.IsLayerType(l.MediaType) || images.IsNonDistributable(l.MediaType) || len(l.URLs) > 0 {
		return fmt.Errorf("layer %s of media type %q: %w", l.Digest, l.MediaType, errdefs.ErrNotFound)
	}
	return nil
}

// image returns the state of t's image, fetching its manifest once.
func (p *Puller) image(ctx context.Context, t target) (*image, error) {
	p.mu.Lock()
	ns, _ := namespaces.Namespace(ctx)
	key := imageKey{ns, t.manifest}
	img := p.images[key]
	if img == nil {
		if p.closed {
			p.mu.Unlock()
			return nil, errors.New("puller closed")
		}
		img = p.newImage(t, key)
		p.images[key] = img
		img.wg.Go(func() { p.load(img, t) })
	}
	p.mu.Unlock()
	select {
	case <-img.loaded:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	if img.loadErr != nil {
		p.mu.Lock()
		p.forget(img)
		p.mu.Unlock()
		return nil, img.loadErr
	}
	return img, nil
}

// load fetches and validates the image's manifest.
func (p *Puller) load(img *image, t target) {
	defer close(img.loaded)
	b, _, err := p.opts.Registry.FetchManifest(img.ctx, t.ref, t.manifest)
	if err != nil {
		img.loadErr = err
		return
	}
	layers, err := parseManifest(b)
	if err != nil {
		img.loadErr = fmt.Errorf("manifest %s of %s: %w", t.manifest, t.ref, err)
		return
	}
	img.layers = layers
}

// parseManifest returns the layers of an image manifest, each checked:
// registry data is hostile.
func parseManifest(b []byte) ([]ocispec.Descriptor, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("not an image manifest: %w", err)
	}
	if len(m.Layers) > MaxLayers {
		return nil, fmt.Errorf("%d layers, more than %d", len(m.Layers), MaxLayers)
	}
	for i, l := range m.Layers {
		if err := l.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("layer %d: digest %q: %w", i, l.Digest, err)
		}
		if l.Size <= 0 || l.Size > MaxLayerSize {
			return nil, fmt.Errorf("layer %d (%s): size %d outside [1, %d]", i, l.Digest, l.Size, int64(MaxLayerSize))
		}
	}
	return m.Layers, nil
}

// forget drops img from the table (p.mu held) once no job of it waits to be
// claimed, or it failed; its jobs in flight are stopped.
func (p *Puller) forget(img *image) {
	if p.images[img.key] == img {
		delete(p.images, img.key)
	}
	for _, j := range img.jobs {
		if j.expiry != nil {
			j.expiry.Stop()
		}
		go j.remove(context.Background())
	}
	img.jobs = map[digest.Digest]*job{}
	if len(img.running) == 0 {
		img.stop(errors.New("image pull over"))
	}
}

// start begins the job of layer l of img (p.mu held).
func (p *Puller) start(img *image, l ocispec.Descriptor) *job {
	ctx, cancel := context.WithCancelCause(img.ctx)
	j := &job{p: p, img: img, desc: l, ctx: ctx, cancel: cancel, done: make(chan struct{}), turn: make(chan struct{}), prev: img.last}
	if img.last != nil {
		j.seq = img.last.seq + 1
	}
	img.last = j
	img.running[j] = struct{}{}
	img.wg.Go(func() { p.run(img, j) })
	return j
}

// run downloads and unpacks one layer.
func (p *Puller) run(img *image, j *job) {
	start := time.Now()
	err := p.unpack(img, j)
	// Counted before the Prepare waiting for it hears (a scrape after the
	// pull sees it) and before the image is stopped below, which cancels
	// j.ctx: a job stopped from outside (a layer before it failed, the
	// image given up, the puller closed) is neither a success nor a
	// failure of its layer.
	if p.opts.Observe != nil && (err == nil || j.ctx.Err() == nil) {
		p.opts.Observe(err == nil, j.desc.Size, time.Since(start))
	}
	p.mu.Lock()
	delete(img.running, j)
	j.err = err
	close(j.done)
	ok := err == nil
	if !ok {
		// containerd's pull stops at this layer: the layers after it are
		// stopped and deleted. Those before it are still wanted. This
		// one waits for its Prepare, which reports the failure.
		cause := fmt.Errorf("layer %s before it failed: %w", j.desc.Digest, err)
		for o := range img.running {
			if o.seq > j.seq {
				o.cancel(cause)
			}
		}
		for d, o := range img.jobs {
			if o.seq > j.seq {
				delete(img.jobs, d)
				if o.expiry != nil {
					o.expiry.Stop()
				}
				go o.remove(context.Background())
			}
		}
		if len(img.jobs) == 0 {
			p.forget(img)
		}
	}
	if img.jobs[j.desc.Digest] == j {
		j.expiry = p.opts.AfterFunc(p.opts.KeepFor, func() { p.expire(img, j) })
	}
	if p.images[img.key] != img && len(img.running) == 0 {
		img.stop(errors.New("image pull over"))
	}
	p.mu.Unlock()
}

// expire deletes a layer done ahead that nobody claimed.
func (p *Puller) expire(img *image, j *job) {
	p.mu.Lock()
	if img.jobs[j.desc.Digest] != j {
		p.mu.Unlock()
		return
	}
	delete(img.jobs, j.desc.Digest)
	if len(img.jobs) == 0 {
		p.forget(img)
	}
	p.mu.Unlock()
	log.L.WithField("layer", j.desc.Digest).Info("parallel pull: layer done ahead was not asked for; deleted")
	j.remove(context.Background())
}

// unpack is the work of one job: staging directory, download, unpack,
// checks.
func (p *Puller) unpack(img *image, j *job) error {
	ctx := j.ctx
	dir, err := os.MkdirTemp(p.staging.Path(), "layer-")
	if err != nil {
		return fmt.Errorf("staging directory: %w", err)
	}
	j.setDir(dir)
	if err := os.Mkdir(filepath.Join(dir, "fs"), 0o755); err != nil {
		return fmt.Errorf("staging directory: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, "blob"))
	if err != nil {
		return fmt.Errorf("staging file: %w", err)
	}
	defer f.Close()
	d, err := chunkfetch.New(f, j.desc, p.opts.ChunkSize)
	if err != nil {
		return err
	}
	blob := p.opts.Registry.Blob(img.ref, j.desc)
	// Downloads are queued per image in layer order, so the layer
	// containerd waits for comes first.
	img.queue(func() { p.download(ctx, img, d, blob) })
	// The zTOC for multi-core inflate, while the blob downloads.
	u, multi := p.spans(ctx, img, j)
	if multi {
		defer u.l.Close()
	}
	// Unpack slots are taken in layer order too.
	err = j.waitTurn(ctx)
	if err == nil {
		err = acquire(ctx, img.up, p.up)
	}
	close(j.turn)
	if err != nil {
		d.Fail(err)
		return err
	}
	defer release(img.up, p.up)
	res, err := p.apply(ctx, j, d, filepath.Join(dir, "fs"), u, multi)
	if err != nil {
		d.Fail(err)
		return err
	}
	crash.Point(crash.PullAfterUnpack)
	if p.opts.Store != nil {
		// The blob was checked whole by the reader Apply drained.
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("read the layer blob back: %w", err)
		}
		sctx := ctx
		if img.key.namespace != "" {
			sctx = namespaces.WithNamespace(ctx, img.key.namespace)
		}
		if err := p.opts.Store.WriteBlob(sctx, j.desc, f); err != nil {
			return err
		}
	}
	if err := os.Remove(filepath.Join(dir, "blob")); err != nil {
		log.G(ctx).WithError(err).Warn("parallel pull: could not delete a layer blob")
	}
	j.diffID, j.implicit = res.DiffID, res.Implicit
	return nil
}

// apply unpacks the layer d downloads into dir: inflated on several cores
// with u when multi (the layer has a zTOC), else (and again, in one stream,
// when that output is not the layer's) as one stream.
func (p *Puller) apply(ctx context.Context, j *job, d *chunkfetch.Download, dir string, u parallelUnpack, multi bool) (layerapply.Result, error) {
	if multi {
		r, closeR := u.reader(ctx, d.Reader(ctx))
		res, err := layerapply.Apply(ctx, dir, r, p.opts.Apply)
		ierr := closeR()
		switch {
		case ierr == nil && err == nil:
			p.observeInflate(true)
			return res, nil
		case ctx.Err() != nil:
			return layerapply.Result{}, errors.Join(ctx.Err(), err)
		case errors.Is(ierr, chunkfetch.ErrDigest) || errors.Is(err, chunkfetch.ErrDigest):
			return layerapply.Result{}, cmp.Or(err, ierr)
		}
		p.observeInflate(false)
		log.G(ctx).WithError(cmp.Or(ierr, err)).WithField("layer", j.desc.Digest).
			Warn("parallel pull: multi-core inflate of the layer failed; unpacking it again in one stream")
		if err := os.RemoveAll(dir); err != nil {
			return layerapply.Result{}, fmt.Errorf("clear the staging directory: %w", err)
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			return layerapply.Result{}, fmt.Errorf("staging directory: %w", err)
		}
	}
	return layerapply.Apply(ctx, dir, d.Reader(ctx), p.opts.Apply)
}

func (p *Puller) observeInflate(ok bool) {
	if p.opts.ObserveInflate != nil {
		p.opts.ObserveInflate(ok)
	}
}

// spans returns the multi-core inflate of j's layer, if it has a usable
// zTOC. Any failure to get one is only logged: the layer is then inflated
// in one stream.
func (p *Puller) spans(ctx context.Context, img *image, j *job) (parallelUnpack, bool) {
	if p.opts.Spans == nil || p.opts.InflateWorkers < 2 || !gzipLayer(j.desc.MediaType) {
		return parallelUnpack{}, false
	}
	l, err := p.opts.Spans.Open(ctx, img.ref, img.key.manifest, j.desc)
	if err != nil {
		log.G(ctx).WithError(err).WithField("layer", j.desc.Digest).Debug("parallel pull: no zTOC for multi-core inflate")
		return parallelUnpack{}, false
	}
	if !parallelizable(l, j.desc.Size) {
		l.Close()
		log.G(ctx).WithField("layer", j.desc.Digest).Debug("parallel pull: the zTOC's spans do not allow multi-core inflate")
		return parallelUnpack{}, false
	}
	return parallelUnpack{l: l, workers: p.opts.InflateWorkers}, true
}

// gzipLayer reports whether mediaType is a gzip layer's.
func gzipLayer(mediaType string) bool {
	switch mediaType {
	case ocispec.MediaTypeImageLayerGzip, images.MediaTypeDockerSchema2LayerGzip:
		return true
	}
	return false
}

// download fetches every chunk of d, each holding a download slot of the
// image and of the node while it runs. It returns once the last chunk is
// under way.
func (p *Puller) download(ctx context.Context, img *image, d *chunkfetch.Download, blob chunkfetch.RangeReader) {
	for i := range d.Chunks() {
		if err := acquire(ctx, img.dl, p.dl); err != nil {
			d.Fail(err)
			return
		}
		img.wg.Go(func() {
			defer release(img.dl, p.dl)
			buf := p.bufs.Get().(*[]byte)
			defer p.bufs.Put(buf)
			_ = d.FetchChunk(ctx, blob, i, *buf) // a failure fails d's reader
		})
	}
}

func acquire(ctx context.Context, sems ...*semaphore.Weighted) error {
	for i, s := range sems {
		if s == nil {
			continue
		}
		if err := s.Acquire(ctx, 1); err != nil {
			release(sems[:i]...)
			return fmt.Errorf("wait for a slot: %w", context.Cause(ctx))
		}
	}
	return nil
}

func release(sems ...*semaphore.Weighted) {
	for _, s := range sems {
		if s != nil {
			s.Release(1)
		}
	}
}
