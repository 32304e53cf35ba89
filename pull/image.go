package pull

import (
	"context"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/semaphore"
)

// imageKey names an image pull: containerd namespace and manifest digest.
type imageKey struct {
	namespace string
	manifest  digest.Digest
}

// image is the parallel pull of one image in one containerd namespace.
type image struct {
	key    imageKey
	ref    string
	ctx    context.Context // its jobs'; cancelled when the image is over or failed
	stop   context.CancelCauseFunc
	wg     sync.WaitGroup
	dl, up *semaphore.Weighted // per image; nil: unbounded

	loaded  chan struct{} // closed when layers or loadErr is set
	layers  []ocispec.Descriptor
	loadErr error

	downloads chan func() // run in order by one goroutine

	// Guarded by Puller.mu:
	jobs    map[digest.Digest]*job // started, not claimed
	running map[*job]struct{}      // not done
	last    *job                   // the job started last
}

func (p *Puller) newImage(t target, key imageKey) *image {
	ctx, cancel := context.WithCancelCause(context.Background())
	img := &image{
		key: key, ref: t.ref, ctx: ctx, stop: cancel,
		dl: weighted(p.opts.MaxDownloadsPerImage), up: weighted(p.opts.MaxUnpacksPerImage),
		loaded:    make(chan struct{}),
		downloads: make(chan func(), MaxLayers),
		jobs:      map[digest.Digest]*job{},
		running:   map[*job]struct{}{},
	}
	img.wg.Go(func() {
		for {
			select {
			case f := <-img.downloads:
				f()
			case <-ctx.Done():
				return
			}
		}
	})
	return img
}

// queue runs f after the downloads queued before it started.
func (img *image) queue(f func()) {
	select {
	case img.downloads <- f:
	case <-img.ctx.Done():
	}
}

// job is the pull of one layer.
type job struct {
	p      *Puller
	img    *image
	desc   ocispec.Descriptor
	seq    int // its place among the image's jobs, in start order
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when err or diffID is set

	turn chan struct{} // closed once it took its unpack slots (or gave up)
	prev *job          // the job of the image started before it; nil: none

	mu  sync.Mutex
	dir string // its staging directory, once made

	diffID   digest.Digest
	implicit []string // directories of the layer its tar does not list
	err      error
	expiry   Timer // guarded by Puller.mu
}

func (j *job) setDir(dir string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.dir = dir
}

func (j *job) fsDir() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return filepath.Join(j.dir, "fs")
}

// remove deletes the job's staging directory once the job is done.
func (j *job) remove(ctx context.Context) {
	<-j.done
	j.cancel(nil)
	j.mu.Lock()
	dir := j.dir
	j.mu.Unlock()
	if dir == "" {
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		log.G(ctx).WithError(err).WithField("path", dir).Warn("parallel pull: could not delete a staging directory")
	}
}

// waitTurn waits until the job started before j took its unpack slots.
func (j *job) waitTurn(ctx context.Context) error {
	if j.prev == nil {
		return nil
	}
	select {
	case <-j.prev.turn:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
