package trace

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/internal/staging"
)

// Options configure a Recorder.
type Options struct {
	// Dir is where traces are written (<root>/fs/traces); its .tmp holds
	// the process's staging.
	Dir string
	// Window is how long an image is recorded from its first mount.
	Window time.Duration
	// UntilFile, when set, is a path in the image whose open ends the
	// image's recording (before Window does).
	UntilFile string
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Recorder records the demand reads of every image mounted while it runs,
// each image once per process: from its first mount until its window ends
// or UntilFile is opened. It is safe for concurrent use.
type Recorder struct {
	opts    Options
	until   string
	staging *staging.Dir
	mu      sync.Mutex
	active  map[digest.Digest]*image
	// ended are the images recorded already (bounded: see maxEnded).
	ended map[digest.Digest]bool
	// writes waits for the traces being written.
	writes sync.WaitGroup
}

// maxActive bounds the images recorded at once; an image first mounted
// while that many are being recorded is not recorded.
const maxActive = 256

// maxEnded bounds the memory of images recorded already; past it the
// oldest knowledge is dropped and an image may be recorded again.
const maxEnded = 1 << 14

type image struct {
	manifest digest.Digest
	deadline time.Time
	layers   map[digest.Digest]*layerBits
	ranges   int
	full     bool
}

type layerBits struct {
	ztoc   digest.Digest
	nspans int
	bits   []uint64
}

func (b *layerBits) has(i int) bool { return i >= 0 && i < b.nspans && b.bits[i/64]&(1<<(i%64)) != 0 }

// Open creates dir and the process's staging in it.
func Open(opts Options) (*Recorder, error) {
	if opts.Window <= 0 {
		return nil, fmt.Errorf("trace recorder: window %v must be positive", opts.Window)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	st, err := staging.Open(filepath.Join(opts.Dir, ".tmp"))
	if err != nil {
		return nil, fmt.Errorf("trace recorder: %w", err)
	}
	r := &Recorder{opts: opts, staging: st, active: map[digest.Digest]*image{}, ended: map[digest.Digest]bool{}}
	if opts.UntilFile != "" {
		r.until = path.Clean("/" + opts.UntilFile)
	}
	return r, nil
}

// Layer starts or joins the recording of image manifest for one of its
// mounted layers (of zTOC ztoc with nspans spans) and returns the layer's
// recorder, or nil when the image was recorded already in this process.
func (r *Recorder) Layer(ctx context.Context, manifest, layer, ztoc digest.Digest, nspans int) *LayerRecorder {
	if nspans <= 0 || nspans > MaxSpans {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended[manifest] {
		return nil
	}
	img := r.active[manifest]
	if img == nil {
		if len(r.active) >= maxActive {
			return nil
		}
		img = &image{manifest: manifest, deadline: r.opts.Now().Add(r.opts.Window), layers: map[digest.Digest]*layerBits{}}
		r.active[manifest] = img
		log.G(ctx).WithField("manifest", manifest).WithField("until", img.deadline).Info("recording the image's reads for a prefetch trace")
	}
	lb := img.layers[layer]
	if lb == nil || lb.ztoc != ztoc || lb.nspans != nspans {
		if lb == nil && len(img.layers) >= MaxLayers {
			return nil
		}
		lb = &layerBits{ztoc: ztoc, nspans: nspans, bits: make([]uint64, (nspans+63)/64)}
		img.layers[layer] = lb
	}
	return &LayerRecorder{r: r, img: img, bits: lb}
}

// LayerRecorder records the reads of one mounted layer.
type LayerRecorder struct {
	r    *Recorder
	img  *image
	bits *layerBits
}

// DemandRead records that a read of the layer needed spans first to last.
func (l *LayerRecorder) DemandRead(first, last int) {
	if l == nil {
		return
	}
	r := l.r
	r.mu.Lock()
	if r.active[l.img.manifest] != l.img {
		r.mu.Unlock()
		return
	}
	if !r.opts.Now().Before(l.img.deadline) {
		r.endLocked(l.img, "window ended")
		r.mu.Unlock()
		return
	}
	b := l.bits
	for i := max(first, 0); i <= last && i < b.nspans; i++ {
		if b.has(i) {
			continue
		}
		left, right := b.has(i-1), b.has(i+1)
		delta := 1
		switch {
		case left && right:
			delta = -1
		case left || right:
			delta = 0
		}
		if l.img.ranges+delta > MaxRanges {
			l.img.full = true
			continue
		}
		l.img.ranges += delta
		b.bits[i/64] |= 1 << (i % 64)
	}
	r.mu.Unlock()
}

// Opened is told the path (in the layer, from its root) of each file
// opened: the open of UntilFile ends the image's recording.
func (l *LayerRecorder) Opened(p string) {
	if l == nil || l.r.until == "" || path.Clean("/"+p) != l.r.until {
		return
	}
	r := l.r
	r.mu.Lock()
	if r.active[l.img.manifest] == l.img {
		r.endLocked(l.img, "file opened: "+r.until)
	}
	r.mu.Unlock()
}

// WantsOpens reports whether Opened does anything.
func (r *Recorder) WantsOpens() bool { return r.until != "" }

// Tick ends the recordings whose window has passed; the owner calls it
// now and then (a ticker), since an image may stop reading before then.
func (r *Recorder) Tick() {
	r.mu.Lock()
	now := r.opts.Now()
	for _, img := range r.active {
		if !now.Before(img.deadline) {
			r.endLocked(img, "window ended")
		}
	}
	r.mu.Unlock()
}

// Wait waits for the traces being written.
func (r *Recorder) Wait() { r.writes.Wait() }

// Close ends every recording in progress (writing what it has), waits for
// the writes and removes the staging.
func (r *Recorder) Close() error {
	r.mu.Lock()
	for _, img := range r.active {
		r.endLocked(img, "recorder closed")
	}
	r.mu.Unlock()
	r.writes.Wait()
	return r.staging.Close()
}

// endLocked ends img's recording and writes its trace in the background.
// Callers hold mu.
func (r *Recorder) endLocked(img *image, why string) {
	delete(r.active, img.manifest)
	if len(r.ended) >= maxEnded {
		clear(r.ended)
	}
	r.ended[img.manifest] = true
	t := img.trace()
	full := img.full
	r.writes.Add(1)
	go func() {
		defer r.writes.Done()
		lg := log.L.WithField("manifest", img.manifest).WithField("reason", why)
		if len(t.Layers) == 0 {
			lg.Info("recording ended; no reads to trace")
			return
		}
		p, err := r.write(t)
		if err != nil {
			lg.WithError(err).Warn("recording ended; cannot write the prefetch trace")
			return
		}
		lg = lg.WithField("trace", p).WithField("layers", len(t.Layers))
		if full {
			lg = lg.WithField("truncated", true)
		}
		lg.Info("recording ended; prefetch trace written")
	}()
}

// trace turns the recorded bits into a Trace (layers with no read left out).
func (img *image) trace() *Trace {
	t := &Trace{Version: Version, Manifest: img.manifest, Layers: map[digest.Digest]Layer{}}
	for d, b := range img.layers {
		var rs []Range
		for i := 0; i < b.nspans; i++ {
			if !b.has(i) {
				continue
			}
			j := i
			for j+1 < b.nspans && b.has(j+1) {
				j++
			}
			rs = append(rs, Range{Start: int64(i), End: int64(j)})
			i = j
		}
		if len(rs) > 0 {
			t.Layers[d] = Layer{ZTOC: b.ztoc, SpanCount: int64(b.nspans), Spans: rs}
		}
	}
	return t
}

// write stores t atomically: staged, synced, renamed into place.
func (r *Recorder) write(t *Trace) (string, error) {
	dst, err := Path(r.opts.Dir, t.Manifest)
	if err != nil {
		return "", err
	}
	data, err := json.Marshal(t)
	if err != nil {
		return "", fmt.Errorf("encode trace: %w", err)
	}
	if len(data) > MaxBytes {
		return "", fmt.Errorf("trace of %d bytes is more than %d", len(data), MaxBytes)
	}
	if err := r.staging.WriteFile(dst, data, nil); err != nil {
		return "", fmt.Errorf("write trace %s: %w", dst, err)
	}
	return dst, nil
}
