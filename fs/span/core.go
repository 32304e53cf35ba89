package span

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/log"
)

// core is the fetch core of one layer, shared by the Manager's reads, its
// read-ahead and its Loader (the background walk): one shared fetch per span
// (single-flight), adjacent spans coalesced into range requests,
// verification against the span digests and checkpoint windows, inflate
// within the decompression bound, and the cache fill. It knows what is
// known about each span: cached, missing, being fetched, failed recently,
// or bad.
type core struct {
	table       Table
	fetcher     Fetcher
	cache       Cache
	dec         Decompressor
	key         string
	keys        []string // cache key per span
	keepZ       bool     // Options.KeepCompressed
	timeout     time.Duration
	maxCoalesce int64
	split       int64 // Options.SplitRequest
	maxSplit    int   // Options.MaxSplit
	limit       *DecompressLimit
	retries     int      // Options.VerifyRetries
	observer    Observer // told of checkpoint window mismatches; nil: none
	demand      Demand   // told while fetches ahead of reads run; nil: none

	// life is the lifecycle of shared fetches (not a request context): it
	// is canceled by close only.
	life context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu      sync.Mutex
	calls   []*call  // in-flight fetch per span; nil when none
	hold    failHold // spans whose last fetch failed recently
	state   []state  // what is known about the cache, per span
	nCached int      // spans in state cached
	closed  bool
	refused map[int]bool // spans refused for their size, logged once
	// bad are the spans whose checkpoint window mismatched (see
	// condemn); poisoned is set when the layer was found bad (poison).
	bad      map[int]error
	poisoned error
	winOK    []bool // spans whose window matched the previous span's bytes
	// zPending are the spans whose compressed copy a fetch is writing
	// (KeepCompressed), closed when it is written or given up.
	zPending map[int]chan struct{}
}

// state is what the core knows about one span in the cache. A span with an
// in-flight call is being fetched whatever its state.
type state uint8

const (
	unknown state = iota // not fetched by this core; a previous run may have cached it
	missing              // not in the cache: fetch it
	cached               // in the cache
)

// call is one shared fetch of one span. data and err are written before done
// is closed and only read after.
type call struct {
	done chan struct{}
	data []byte
	err  error
	// reserved: a background walk fetches the span (see Loader.Reserve);
	// Load or Release completes the call. waited: a read waits for it,
	// or a read-ahead wanted it (Loader.Waited). Both guarded by core.mu.
	reserved, waited bool
}

// failedCall is a finished call that failed with err.
func failedCall(err error) *call {
	c := &call{done: make(chan struct{}), err: err}
	close(c.done)
	return c
}

// wait blocks until c is done or ctx is canceled.
func wait(ctx context.Context, c *call) error {
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// newCore returns the core of checked options with their defaults applied.
func newCore(opts Options) *core {
	n := len(opts.Table.Spans)
	c := &core{
		table: opts.Table, fetcher: opts.Fetcher, cache: opts.Cache, dec: opts.Decompressor,
		key: opts.CacheKey, keys: make([]string, n), keepZ: opts.KeepCompressed,
		timeout: cmp.Or(opts.FetchTimeout, DefaultFetchTimeout), maxCoalesce: cmp.Or(opts.MaxCoalesce, DefaultMaxCoalesce),
		split: opts.SplitRequest, maxSplit: opts.MaxSplit, limit: opts.Limit,
		retries: max(opts.VerifyRetries, 0), observer: opts.Observer, demand: opts.Demand,
		hold:  failHold{hold: cmp.Or(opts.FailHold, DefaultFailHold), now: opts.Now},
		calls: make([]*call, n), state: make([]state, n), winOK: make([]bool, n),
	}
	if c.maxSplit <= 0 {
		c.maxSplit = 4
	}
	if c.hold.now == nil {
		c.hold.now = time.Now
	}
	for i, s := range opts.Table.Spans {
		c.keys[i] = opts.CacheKey + "/" + strconv.FormatInt(s.UncompressedStart, 10) + "-" + strconv.FormatInt(s.UncompressedEnd, 10)
		if s.Len() == 0 {
			c.setState(i, cached) // nothing to fetch
		}
	}
	c.life, c.stop = context.WithCancel(context.Background())
	return c
}

// plan returns, for each span in [first, last], the shared fetch to wait on,
// or nil when the span is cached (see callAt: no slice at all when every
// span is cached, the warm read). Spans in neither state are marked as being
// fetched and their fetches started, adjacent ones grouped into one request
// of at most MaxCoalesce compressed bytes. A span too large for the
// decompression bound fails at once, unfetched.
func (c *core) plan(ctx context.Context, first, last int) ([]*call, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if c.poisoned != nil {
		return nil, c.poisoned
	}
	var calls []*call
	set := func(i int, cl *call) {
		if calls == nil {
			calls = make([]*call, last-first+1)
		}
		calls[i-first] = cl
	}
	var fresh []int
	joined := false // a walk's chunk a read now waits for
	for i := first; i <= last; i++ {
		if err := c.bad[i]; err != nil {
			set(i, failedCall(err))
			continue
		}
		if c.state[i] == cached {
			continue
		}
		if err := c.tooLarge(ctx, i); err != nil {
			set(i, failedCall(err))
			continue
		}
		if c.calls[i] == nil {
			if err := c.hold.recent(i); err != nil {
				set(i, failedCall(err))
				continue
			}
			c.calls[i] = &call{done: make(chan struct{})}
			fresh = append(fresh, i)
		} else if cl := c.calls[i]; cl.reserved && !cl.waited {
			cl.waited, joined = true, true
		}
		set(i, c.calls[i])
	}
	if p, ok := c.demand.(Preempter); ok && joined && len(fresh) == 0 {
		// The walk's other chunks give way to the one a read waits
		// for (a fresh fetch preempts them in start).
		p.Preempt()
	}
	c.start(fresh, c.maxCoalesce, false)
	return calls, nil
}

// callAt returns the k-th call of what plan returned (nil: cached).
func callAt(calls []*call, k int) *call {
	if calls == nil {
		return nil
	}
	return calls[k]
}

// fetchAhead starts fetching the spans in [first, last] that are neither
// cached, nor being fetched, nor failed recently, in requests of at most
// maxReq compressed bytes; nobody waits for them yet. They are fetched on
// behalf of reads (read-ahead, neighbours): the Demand is told while each
// runs, so that the background walk does not compete with them. A span the
// walk is fetching is marked as waited for (Loader.Waited), as a read
// would: the preemption these fetches start spares the walk's chunk that
// already brings it, rather than throw its bytes away and fetch it again.
func (c *core) fetchAhead(ctx context.Context, first, last int, maxReq int64) {
	c.probe(ctx, first, last)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	var fresh []int
	for i := first; i <= last; i++ {
		if cl := c.calls[i]; cl != nil && cl.reserved {
			cl.waited = true
		}
		if c.state[i] == cached || c.calls[i] != nil || c.hold.recent(i) != nil {
			continue
		}
		c.calls[i] = &call{done: make(chan struct{})}
		fresh = append(fresh, i)
	}
	c.start(fresh, maxReq, true)
}

// start runs the shared fetches of the spans fresh (ascending indices, their
// calls made), one per request of at most maxReq compressed bytes (see
// Table.Run). With ahead, each request is a demand (Options.Demand) from
// its start to its end (readers wait for a demand fetch themselves and
// are counted while they wait) and is never split (SplitRequest): fetches
// ahead are parallel requests already. Callers hold mu.
func (c *core) start(fresh []int, maxReq int64, ahead bool) {
	if p, ok := c.demand.(Preempter); ok && len(fresh) > 0 {
		p.Preempt()
	}
	c.table.runs(fresh, maxReq, func(first, last int) {
		c.wg.Add(1)
		demand := ahead && c.demand != nil
		if demand {
			c.demand.BeginDemand()
		}
		split := c.split
		if ahead {
			split = 0 // nobody waits: parallel requests already, no need for parts
		}
		go func() {
			defer c.wg.Done()
			if demand {
				defer c.demand.EndDemand()
			}
			c.fetchAs(first, last, split, ahead)
		}()
	})
}

// tooLarge refuses span i when its uncompressed length alone exceeds the
// decompression bound, logging the first refusal. Callers hold mu.
func (c *core) tooLarge(ctx context.Context, i int) error {
	err := c.limit.check(c.table.Spans[i].Len())
	if err == nil {
		return nil
	}
	if !c.refused[i] {
		if c.refused == nil {
			c.refused = map[int]bool{}
		}
		c.refused[i] = true
		log.G(ctx).WithError(err).WithField("layer", c.key).WithField("span", i).
			Error("span too large to decompress; reads of it fail with EIO")
	}
	return fmt.Errorf("span %d of %s: %w", i, c.key, err)
}

// invalidate marks span i as missing after the cache lost it.
func (c *core) invalidate(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setState(i, missing)
}

// setState sets the state of span i and keeps nCached. Callers hold mu
// (or own c exclusively).
func (c *core) setState(i int, s state) {
	if c.state[i] == cached {
		c.nCached--
	}
	if s == cached {
		c.nCached++
	}
	c.state[i] = s
}

// cached reports how many spans are known to be in the cache.
func (c *core) cached() (spans, total int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nCached, len(c.table.Spans)
}

// probe asks the cache about the spans in [first, last] whose state is
// unknown, so that spans cached by a previous run are not fetched again.
// It reads at most one byte per span and holds no lock while asking.
func (c *core) probe(ctx context.Context, first, last int) {
	var todo []int
	c.mu.Lock()
	for i := first; i <= last; i++ {
		if c.state[i] == unknown && c.calls[i] == nil {
			todo = append(todo, i)
		}
	}
	c.mu.Unlock()
	for _, i := range todo {
		s := missing
		if c.inCache(i) {
			s = cached
		}
		c.mu.Lock()
		if c.state[i] == unknown {
			c.setState(i, s)
		}
		c.mu.Unlock()
		if s == cached {
			log.G(ctx).WithField("layer", c.key).WithField("span", i).Trace("span found in cache")
		}
	}
}

// inCache reports whether the cache holds span i with its full length.
func (c *core) inCache(i int) bool {
	var b [1]byte
	n, _ := c.cache.GetAt(c.keys[i], b[:], c.table.Spans[i].Len()-1)
	return n == 1
}

// readCached fills out from the cached span i starting at rel and reports
// whether the cache had all of it.
func (c *core) readCached(ctx context.Context, i int, out []byte, rel int64) bool {
	n, err := c.cache.GetAt(c.keys[i], out, rel)
	if n == len(out) {
		return true
	}
	log.G(ctx).WithError(err).WithField("layer", c.key).WithField("span", i).Debug("cached span missing or short, refetching")
	return false
}

// finish completes the shared fetch of span i. The span becomes cached when
// stored, otherwise missing again so that a later read fetches it anew.
func (c *core) finish(i int, data []byte, err error, stored bool) {
	c.mu.Lock()
	c.finishLocked(i, c.calls[i], data, err, stored)
}

// finishOwn is finish for a caller that holds call cl of span i (a
// reservation): it does nothing and returns false when the span's call is
// no longer cl (released meanwhile).
func (c *core) finishOwn(i int, cl *call, data []byte, err error, stored bool) bool {
	c.mu.Lock()
	if c.calls[i] != cl {
		c.mu.Unlock()
		return false
	}
	c.finishLocked(i, cl, data, err, stored)
	return true
}

// finishLocked completes cl, span i's call, with c.mu held; it unlocks.
func (c *core) finishLocked(i int, cl *call, data []byte, err error, stored bool) {
	c.calls[i] = nil
	if bad := cmp.Or(c.poisoned, c.bad[i]); bad != nil && err == nil {
		data, err, stored = nil, bad, false // taken out of service while it loaded
	}
	if data == nil && !errors.Is(err, ErrVerification) { // a fetch that failed; a bad span is re-fetched
		c.hold.note(i, err)
	} else {
		c.hold.note(i, nil)
	}
	if stored {
		c.setState(i, cached)
	} else {
		c.setState(i, missing)
	}
	c.mu.Unlock()
	cl.data, cl.err = data, err
	close(cl.done)
}

// compressedKey is the cache key of span i's compressed bytes.
func (c *core) compressedKey(i int) string {
	return c.key + "/z/" + strings.TrimPrefix(c.keys[i], c.key+"/")
}

// keeping marks span i's compressed copy as being written; the caller
// closes the channel it returns once it is (see zPending).
func (c *core) keeping(i int) chan struct{} {
	ch := make(chan struct{})
	c.mu.Lock()
	if c.zPending == nil {
		c.zPending = map[int]chan struct{}{}
	}
	c.zPending[i] = ch
	c.mu.Unlock()
	return ch
}

// keptDone ends what keeping began.
func (c *core) keptDone(i int, ch chan struct{}) {
	c.mu.Lock()
	if c.zPending[i] == ch {
		delete(c.zPending, i)
	}
	c.mu.Unlock()
	close(ch)
}

// keptWait returns the channel to wait on for span i's compressed copy
// being written, or nil.
func (c *core) keptWait(i int) chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.zPending[i]
}

// keepCompressed caches the verified compressed bytes of span i when the
// core keeps them; failing to is harmless (the walk fetches it again).
func (c *core) keepCompressed(ctx context.Context, i int, compressed []byte) {
	if !c.keepZ {
		return
	}
	if err := c.cache.Put(c.compressedKey(i), compressed); err != nil {
		log.G(ctx).WithError(err).WithField("span", i).Debug("cannot keep compressed span")
	}
}

// close cancels in-flight shared fetches, waits for their goroutines and
// makes later plans fail with ErrClosed.
func (c *core) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.stop()
	c.wg.Wait()
}
