package background

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"

	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

// Defaults for Options fields left zero.
const (
	DefaultWorkers      = 4
	DefaultChunkSize    = 8 << 20
	DefaultRetryWait    = 500 * time.Millisecond
	DefaultMaxAttempts  = 3
	DefaultFetchTimeout = 5 * time.Minute
	// DefaultMaxMemory bounds the compressed chunks all walks hold at once.
	DefaultMaxMemory = 16 << 20
)

// ErrDigestMismatch is wrapped by the error of a layer whose blob does not
// hash to its digest.
var ErrDigestMismatch = errors.New("layer digest mismatch")

// Observer receives the scheduler's metrics. Failure kinds are the
// metrics.Failure* constants: verification, fetch, span_load, unverified
// and ztoc_mismatch.
type Observer interface {
	BackgroundBytes(n int64)
	// LayerCompleted and LayerFetched both count a layer made fully
	// local; LayerFetched also names it and says how long its walk took.
	LayerCompleted()
	LayerFetched(layer string, took time.Duration)
	Failure(kind string)
	// QueueFull counts a layer the full queue had no room for.
	QueueFull()
}

// Options configure a Scheduler.
type Options struct {
	// Workers is the number of layers fetched at once, each with one range
	// request in flight (default DefaultWorkers).
	Workers int
	// ChunkSize is the uncompressed size of one range request (at least one
	// span; default DefaultChunkSize).
	ChunkSize int64
	// Delay is how long a layer waits after Enqueue before its first fetch.
	Delay time.Duration
	// Quiet is how long after the last demand ended (see BeginDemand)
	// workers wait before they start a chunk (0: not at all). A program
	// reading a layer comes back for more soon after a read-ahead ended;
	// a chunk started in that gap would share the link with its next
	// demand.
	Quiet time.Duration
	// FastLink, if set, reports whether the link to the registry delivers
	// bytes faster than the walk can take them in (it inflates and hashes
	// what it fetches). On such a link a mount, like a demand, leaves a
	// quiet period behind it (MountQuiet): the walk waits while the
	// container is being created and started, when its CPU would compete
	// with runc and the container's first reads, and catches up quickly
	// afterwards. On a slower link (or without FastLink) the walk starts
	// as soon as the mounts are over: the link is then what limits it, and
	// it is idle until the container reads.
	FastLink func() bool
	// MountQuiet is how long workers wait after a mount ended on a fast
	// link (see FastLink; default Quiet).
	MountQuiet time.Duration
	// RetryWait is the pause after a failed chunk (default DefaultRetryWait).
	RetryWait time.Duration
	// MaxAttempts is how many times one chunk is tried before the layer is
	// given up (default DefaultMaxAttempts).
	MaxAttempts int
	// FetchTimeout bounds one chunk's range request (default DefaultFetchTimeout).
	FetchTimeout time.Duration
	// MaxMemory bounds the compressed bytes the walks of all layers hold
	// at once: chunks fetched and not yet both loaded into the span cache
	// and consumed by the stream cross-check (default DefaultMaxMemory;
	// one chunk larger than that goes alone). Workers wait for room
	// before they fetch.
	MaxMemory int64
	// MaxQueue bounds the layers waiting to start; <= 0 is unbounded.
	MaxQueue int
	// DropOldest: when the queue is full, drop the layer queued longest
	// instead of the one being added.
	DropOldest bool
	// Observer receives metrics; nil: none.
	Observer Observer
	// StateDir, if set, keeps the Markers: per layer and zTOC verified
	// whole, so that after a restart a layer whose spans are all cached is
	// not downloaded again; and per layer and zTOC found bad, so that new
	// mounts refuse them.
	StateDir string
	// OnBad, if set, is called when a layer served from a zTOC was found
	// to contradict it (ErrZTOCMismatch; the pair is marked bad), before
	// the layer's result is logged: whoever serves that layer with that
	// zTOC takes it out of service (span.Manager.Poison).
	OnBad func(layer, ztoc digest.Digest, reason error)
	// EagerBytes: a layer whose blob is at most this many compressed
	// bytes is walked eagerly (0: none): its walk neither waits for
	// demand reads nor for the quiet period after them, and reads do not
	// preempt its chunks; it still yields to mounts. Such a layer costs
	// the link about a second or two, and the reads of a program that
	// needs most of it (imports scattered over the whole layer) otherwise
	// stop the one stream that keeps the link busy: the link then idles
	// between their misses, and the preempted chunk is fetched twice.
	// Reads of the spans the walk reserved wait for its chunk; reads of
	// others fetch them beside it. The layers walked eagerly at once are
	// at most EagerBytes together: a layer whose share does not fit
	// yields to reads until it does.
	EagerBytes int64
	// EagerTime, when > 0, also bounds an eager layer by the link: its
	// blob must cross it within EagerTime at the rate LinkRate reports
	// (without one: assumed fast enough), so that on a slow link a walk
	// does not take a share of it from reads for long. On a fast link
	// (FastLink) no layer is walked eagerly: reads are quick there, and
	// the walk's CPU is better spent after the container started.
	EagerTime time.Duration
	// LinkRate, if set, reports the link's rate in bytes per second; ok
	// is false before it is known.
	LinkRate func() (bytesPerSecond float64, ok bool)
	// OnIdle, if set, is called (on a worker, without locks held) each
	// time a layer's walk ends and no other layer is being walked or
	// waiting: the walks' transient memory is then garbage, which the
	// caller may hand back to the OS (debug.FreeOSMemory).
	OnIdle func()
}

// Scheduler runs the background fetches of a node. It is safe for
// concurrent use; Close stops it.
type Scheduler struct {
	opts    Options
	markers Markers
	mem     *budget
	life    context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup

	mu      sync.Mutex
	queue   []*job          // waiting, in arrival order
	active  map[string]*job // by key
	done    map[string]bool // layers (doneKey) verified whole by this process
	changed chan struct{}   // closed and replaced when queue changes
	closed  bool

	// onDone, set by tests before the first Enqueue, is called once per
	// layer that finished: err is nil when the layer is local and verified
	// (blob digest, and with a file table the cross-check). It is not
	// called for canceled or dropped layers.
	onDone func(key string, err error)

	// eagerKeys are the layers (by key) walked eagerly, with their sizes;
	// eagerHeld is their sum (at most Options.EagerBytes).
	eagerMu   sync.Mutex
	eagerKeys map[string]int64
	eagerHeld int64

	demandMu sync.Mutex
	demand   int
	idle     chan struct{} // closed while demand == 0 and mounts == 0
	lastEnd  time.Time     // when a demand last ended, or a preemption
	// quietUntil: no chunk starts before it (a mount on a fast link).
	quietUntil time.Time
	mounts     int // layers being mounted (BeginMount)
	// round is canceled by a preemption (Preempt, BeginMount): the chunks
	// fetched under it stop. mountRound is canceled by BeginMount only:
	// the chunks of eager walks (Options.EagerBytes) are fetched under it.
	round            context.Context
	cancelRound      context.CancelFunc
	mountRound       context.Context
	cancelMountRound context.CancelFunc
	noMounts         chan struct{} // closed while mounts == 0
}

// job is one layer to complete.
type job struct {
	layer     Layer
	notBefore time.Time
	log       *logrus.Entry
	ctx       context.Context
	cancel    context.CancelFunc
	finished  chan struct{} // closed when a worker is done with it
}

// New starts a Scheduler with opts.Workers workers.
func New(opts Options) *Scheduler {
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	if opts.RetryWait <= 0 {
		opts.RetryWait = DefaultRetryWait
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = DefaultFetchTimeout
	}
	if opts.MaxMemory <= 0 {
		opts.MaxMemory = DefaultMaxMemory
	}
	s := &Scheduler{
		opts: opts, markers: NewMarkers(opts.StateDir), mem: newBudget(opts.MaxMemory), active: map[string]*job{}, done: map[string]bool{},
		changed: make(chan struct{}), idle: make(chan struct{}), eagerKeys: map[string]int64{},
	}
	close(s.idle)
	s.noMounts = make(chan struct{})
	close(s.noMounts)
	s.round, s.cancelRound = context.WithCancel(context.Background())
	s.mountRound, s.cancelMountRound = context.WithCancel(context.Background())
	s.life, s.stop = context.WithCancel(context.Background())
	for range opts.Workers {
		s.wg.Add(1)
		go s.work()
	}
	return s
}

// Enqueue queues l to be made local and reports whether it was queued. A
// layer already queued or running under l.Key is replaced (its work is
// stopped first). A layer verified before whose spans are all still cached
// is reported local without a download when its turn comes. ctx gives the
// logger only.
func (s *Scheduler) Enqueue(ctx context.Context, l Layer) bool {
	if err := l.check(); err != nil {
		log.G(ctx).WithError(err).Warn("not fetching layer in the background")
		return false
	}
	s.Cancel(l.Key)
	lg := log.G(ctx).WithField("layer", l.Digest)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if limit := s.opts.MaxQueue; limit > 0 && len(s.queue) >= limit {
		s.observe(func(o Observer) { o.QueueFull() })
		if !s.opts.DropOldest {
			lg.WithField("queued", len(s.queue)).Warn("background fetch queue full; layer stays lazily loaded")
			return false
		}
		s.dropOldest()
	}
	jctx, cancel := context.WithCancel(log.WithLogger(s.life, lg))
	s.queue = append(s.queue, &job{
		layer: l, notBefore: time.Now().Add(s.opts.Delay), log: lg,
		ctx: jctx, cancel: cancel, finished: make(chan struct{}),
	})
	s.broadcast()
	return true
}

// dropOldest removes the oldest job. Callers hold mu and the queue is not
// empty.
func (s *Scheduler) dropOldest() {
	j := s.queue[0]
	s.queue = append(s.queue[:0], s.queue[1:]...)
	j.cancel()
	close(j.finished)
	j.log.WithField("queued", len(s.queue)+1).Warn("background fetch queue full; dropped the oldest layer, it stays lazily loaded")
}

// Cancel stops the work on the layer queued under key and returns once no
// worker touches it any more. Unknown keys are ignored.
func (s *Scheduler) Cancel(key string) {
	s.mu.Lock()
	for i, j := range s.queue {
		if j.layer.Key == key {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			j.cancel()
			close(j.finished)
			break
		}
	}
	j := s.active[key]
	s.mu.Unlock()
	if j != nil {
		j.cancel()
		<-j.finished
	}
}

// Close stops all work, waits for the workers and drops the queue.
func (s *Scheduler) Close() error {
	s.mu.Lock()
	s.closed = true
	for _, j := range s.queue {
		j.cancel()
		close(j.finished)
	}
	s.queue = nil
	s.broadcast()
	s.mu.Unlock()
	s.stop()
	s.wg.Wait()
	return nil
}

// broadcast wakes the workers waiting for the queue. Callers hold mu.
func (s *Scheduler) broadcast() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// BeginDemand marks a demand read waiting for the registry: workers start no
// new chunk until every such read has ended.
func (s *Scheduler) BeginDemand() {
	s.demandMu.Lock()
	s.busyLocked()
	s.demand++
	s.demandMu.Unlock()
}

// EndDemand ends what BeginDemand began.
func (s *Scheduler) EndDemand() {
	s.demandMu.Lock()
	s.demand--
	s.lastEnd = time.Now()
	s.idleLocked()
	s.demandMu.Unlock()
}

// Preempt stops the chunks the walks are fetching now: a fetch for reads
// (a miss, read-ahead, neighbours) has just started and would share the
// link with them. Their spans are released (readers waiting for them fetch
// them themselves) and fetched again by the walk once demand is over; a
// preempted chunk is not a failed attempt. Workers then wait as after a
// demand ended (Options.Quiet), so that the reads that are about to call
// BeginDemand do so first.
func (s *Scheduler) Preempt() {
	s.demandMu.Lock()
	s.lastEnd = time.Now()
	s.preemptLocked(false)
	s.demandMu.Unlock()
}

// BeginMount marks a layer being mounted (its zTOC downloaded, its tree
// built): workers start no new chunk, and the chunks in flight are
// preempted, until every mount has ended. containerd mounts an image's
// layers one after another, so the walk of the first layers would delay
// the mounts of the next; unlike demand, a mount leaves no quiet period
// behind it: the link is idle from the last mount until the container
// reads, which is when the walk should use it.
func (s *Scheduler) BeginMount() {
	s.demandMu.Lock()
	s.busyLocked()
	s.preemptLocked(true)
	if s.mounts == 0 {
		s.noMounts = make(chan struct{})
	}
	s.mounts++
	s.demandMu.Unlock()
}

// EndMount ends what BeginMount began. On a fast link (Options.FastLink)
// the workers then wait Options.MountQuiet, as after a demand.
func (s *Scheduler) EndMount() {
	fast := s.fastLink()
	s.demandMu.Lock()
	s.mounts--
	if fast {
		quiet := s.opts.MountQuiet
		if quiet <= 0 {
			quiet = s.opts.Quiet
		}
		s.quietUntil = later(s.quietUntil, time.Now().Add(quiet))
	}
	if s.mounts == 0 {
		close(s.noMounts)
	}
	s.idleLocked()
	s.demandMu.Unlock()
}

// busyLocked opens the idle channel when nothing held the workers back
// yet. Callers hold demandMu, before counting themselves.
func (s *Scheduler) busyLocked() {
	if s.demand == 0 && s.mounts == 0 {
		s.idle = make(chan struct{})
	}
}

// idleLocked closes the idle channel when nothing holds the workers back
// any more. Callers hold demandMu, after counting themselves out.
func (s *Scheduler) idleLocked() {
	if s.demand == 0 && s.mounts == 0 {
		close(s.idle)
	}
}

// preemptLocked cancels the chunk fetches of the current round and starts
// a new round; mount also does so for the eager walks' round. Callers hold
// demandMu.
func (s *Scheduler) preemptLocked(mount bool) {
	s.cancelRound()
	s.round, s.cancelRound = context.WithCancel(context.Background())
	if mount {
		s.cancelMountRound()
		s.mountRound, s.cancelMountRound = context.WithCancel(context.Background())
	}
}

// chunkContext is ctx, also canceled once round (what waitIdle returned)
// is, that is when the walk is preempted (see Preempt; for an eager walk,
// only by a mount), before stop is called, unless spared says that a read
// waits for the chunk; preempted reports whether a preemption happened. A
// preemption between waitIdle and the fetch (while the worker waited for
// room in the budget, which the preempted chunks then freed) cancels the
// chunk at once: it would share the link with the reads it should yield to.
func (s *Scheduler) chunkContext(ctx, round context.Context, spared func() bool) (cctx context.Context, preempted func() bool, stop func()) {
	cctx, cancel := context.WithCancel(ctx)
	unhook := context.AfterFunc(round, func() {
		if !spared() {
			cancel()
		}
	})
	return cctx, func() bool { return round.Err() != nil && ctx.Err() == nil }, func() { unhook(); cancel() }
}

var _ span.Demand = (*Scheduler)(nil)

// waitIdle returns once no demand or mount is in progress, none has ended
// for Options.Quiet and no mount on a fast link for Options.MountQuiet, or
// with ctx's error; with eager (see Options.EagerBytes), once no layer is
// being mounted and none has on a fast link for Options.MountQuiet. It
// returns the preemption round it found idle (see chunkContext).
func (s *Scheduler) waitIdle(ctx context.Context, eager bool, beforeWait func()) (context.Context, error) {
	for {
		s.demandMu.Lock()
		idle, busy, until, round := s.idle, s.demand > 0 || s.mounts > 0, s.quietUntil, s.round
		if eager {
			idle, busy, round = s.noMounts, s.mounts > 0, s.mountRound
		} else if !s.lastEnd.IsZero() {
			until = later(until, s.lastEnd.Add(s.opts.Quiet))
		}
		s.demandMu.Unlock()
		wait := time.Until(until)
		if beforeWait != nil && (busy || wait > 0) {
			beforeWait()
			beforeWait = nil
		}
		if busy {
			select {
			case <-idle:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if wait <= 0 {
			return round, nil
		}
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// work runs jobs until Close.
func (s *Scheduler) work() {
	defer s.wg.Done()
	for {
		j, wait, changed := s.next()
		if j != nil {
			s.run(j)
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-changed:
		case <-t.C:
		case <-s.life.Done():
		}
		t.Stop()
		if s.life.Err() != nil {
			return
		}
	}
}

// next takes the first ready job off the queue and marks it active; without one it says how long to wait at most. A layer
// whose digest is being fetched under another key waits for that fetch (it
// then finds its spans cached).
func (s *Scheduler) next() (*job, time.Duration, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	wait := time.Hour
	best := -1
	busy := make(map[string]bool, len(s.active))
	for _, j := range s.active {
		busy[j.layer.Digest.String()] = true
	}
	for i, j := range s.queue {
		if d := j.notBefore.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		if busy[j.layer.Digest.String()] {
			continue // woken by the broadcast when that fetch finishes
		}
		if best < 0 {
			best = i
		}
	}
	if best < 0 || s.closed {
		return nil, wait, s.changed
	}
	j := s.queue[best]
	s.queue = append(s.queue[:best], s.queue[best+1:]...)
	s.active[j.layer.Key] = j
	return j, 0, nil
}

// run completes one job and reports it. Only a layer whose blob hashed to
// its digest, whose spans all loaded and (with a file table) whose zTOC
// matched the real layer is reported fully local, counted as completed and
// marked verified; anything else is a Warn or Error with its reason and a
// failure kind.
func (s *Scheduler) run(j *job) {
	start := time.Now()
	if s.alreadyLocal(j) {
		s.finish(j, nil)
		j.log.Info("layer fully local: all spans cached, blob verified by an earlier run")
		if s.onDone != nil {
			s.onDone(j.layer.Key, nil)
		}
		return
	}
	res, err := s.complete(j.ctx, j)
	if err == nil {
		err = s.judge(j.ctx, j.layer, &res)
	}
	canceled := err != nil && j.ctx.Err() != nil && !errors.Is(err, ErrDigestMismatch) && !errors.Is(err, ErrZTOCMismatch)
	switch {
	case err == nil:
		s.markVerified(j)
	case errors.Is(err, ErrZTOCMismatch) && !canceled:
		s.markBad(j, err) // before finish: a mount after the layer's end sees it
		if s.opts.OnBad != nil {
			s.opts.OnBad(j.layer.Digest, j.layer.ZTOC, err)
		}
	}
	s.finish(j, err)
	lg := j.log.WithField("took", time.Since(start)).WithField("bytes", res.fetched).WithField("blob_digest_checked", res.checked)
	if j.layer.ZTOC != "" {
		lg = lg.WithField("ztoc", j.layer.ZTOC)
	}
	var m *tarcheck.Mismatch
	if errors.As(err, &m) {
		lg = lg.WithField("entry", m.Name).WithField("field", m.Field)
	}
	switch {
	case canceled:
		lg.Debug("background fetch of layer stopped")
		return
	case err == nil:
		lg.Info("layer fully local")
		s.observe(func(o Observer) { o.LayerCompleted() })
		s.observe(func(o Observer) { o.LayerFetched(j.layer.Digest.String(), time.Since(start)) })
	case errors.Is(err, ErrDigestMismatch):
		lg.WithError(err).Error("layer blob does not match its digest")
		s.observe(func(o Observer) { o.Failure(metrics.FailureVerification) })
	case errors.Is(err, ErrZTOCMismatch):
		lg.WithError(err).Error("zTOC contradicts the verified layer; layer marked bad, new mounts of it fall back to a normal unpack")
		s.observe(func(o Observer) { o.Failure(metrics.FailureZTOCMismatch) })
	case errors.Is(err, ErrSpanLoad):
		lg.WithError(err).Warn("layer not fully local: spans did not load")
		s.observe(func(o Observer) { o.Failure(metrics.FailureSpanLoad) })
	case errors.Is(err, ErrUnverified):
		lg.WithError(err).Warn("layer not reported fully local: its blob digest was not checked")
		s.observe(func(o Observer) { o.Failure(metrics.FailureUnverified) })
	default:
		lg.WithError(err).Warn("background fetch of layer failed; it stays lazily loaded")
	}
	if s.onDone != nil {
		s.onDone(j.layer.Key, err)
	}
}

// judge turns what a walk found besides a fatal error into the layer's
// result: nil only when it is fully local and verified.
func (s *Scheduler) judge(ctx context.Context, l Layer, res *walkResult) error {
	if res.stream != nil {
		return res.stream
	}
	missing := 0
	if res.sums != nil {
		var err error
		if missing, err = compareSpans(ctx, l, res.sums, res.loaded); err != nil {
			return fmt.Errorf("layer %s, zTOC %s: %w", l.Digest, l.ZTOC, err)
		}
	}
	switch {
	case errors.Is(res.loadErr, span.ErrWindowMismatch):
		// The span's compressed bytes matched the zTOC's digest: its
		// windows contradict bytes the zTOC itself vouches for.
		return fmt.Errorf("layer %s, zTOC %s: %w: %w", l.Digest, l.ZTOC, ErrZTOCMismatch, res.loadErr)
	case res.loadFailed > 0:
		return fmt.Errorf("layer %s: %d chunks had spans that failed to load, the first: %w: %w", l.Digest, res.loadFailed, res.loadErr, ErrSpanLoad)
	case missing > 0:
		return fmt.Errorf("layer %s: %d spans are not in the span cache after the walk (evicted or not stored): %w", l.Digest, missing, ErrSpanLoad)
	case !res.checked:
		return fmt.Errorf("layer %s: whole-blob digest check skipped: %s: %w", l.Digest, res.skipped, ErrUnverified)
	}
	return nil
}

// finish retires the active job j, remembering it when err is nil.
func (s *Scheduler) finish(j *job, err error) {
	s.mu.Lock()
	delete(s.active, j.layer.Key)
	if err == nil {
		s.done[doneKey(j)] = true
	}
	s.broadcast() // a layer of the same digest may be waiting
	idle := len(s.active) == 0 && len(s.queue) == 0
	s.mu.Unlock()
	j.cancel()
	close(j.finished)
	if idle && s.opts.OnIdle != nil {
		s.opts.OnIdle()
	}
}

func (s *Scheduler) observe(f func(Observer)) {
	if s.opts.Observer != nil {
		f(s.opts.Observer)
	}
}

// Queued is the number of layers waiting to start.
func (s *Scheduler) Queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
