package span

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// Fetcher reads compressed bytes of the layer blob from the registry
// (io.ReaderAt contract plus ctx). It should honour ctx: a fetch that ignores
// it is abandoned at the deadline but keeps its goroutine until it returns.
type Fetcher interface {
	FetchAt(ctx context.Context, p []byte, off int64) (int, error)
}

// Cache stores uncompressed span data. Get returns an error wrapping
// errdefs.ErrNotFound on a miss. Remove drops the entry key and every entry
// under key + "/" (a missing key is not an error).
type Cache interface {
	Get(key string) ([]byte, error)
	Put(key string, data []byte) error
	Remove(key string) error
}

// RangeCache is optionally implemented by a Cache that can read part of an
// entry without loading all of it (io.ReaderAt contract). The Manager uses it
// for cached reads when present, so a 4 KiB read does not load a whole span.
type RangeCache interface {
	GetAt(key string, p []byte, off int64) (int, error)
}

// Decompressor inflates span i of the table from exactly its compressed bytes
// (blob[CompressedStart:CompressedEnd]). It must size its output by the
// span's declared uncompressed length (plus small slack), never by what the
// compressed data says: the Manager bounds decompressions by that length.
type Decompressor interface {
	Decompress(compressed []byte, i int) ([]byte, error)
}

// ErrVerification is wrapped by errors for span bytes whose digest does not
// match the table.
var ErrVerification = errors.New("digest mismatch")

// ErrClosed is wrapped by errors for reads after Close.
var ErrClosed = errors.New("span manager closed")

// Defaults for Options fields left zero.
const (
	DefaultFetchTimeout       = 10 * time.Second
	DefaultMaxCoalesce  int64 = 16 << 20
	// DefaultReadAheadRequest bounds one read-ahead request.
	DefaultReadAheadRequest int64 = 4 << 20
)

// maxCacheAttempts bounds how often one read retries a span that was thought
// cached but is missing from the cache.
const maxCacheAttempts = 3

// Options configure a Manager.
type Options struct {
	Table        Table
	Fetcher      Fetcher
	Cache        Cache
	Decompressor Decompressor
	// CacheKey identifies what produced the decompressed data: the layer's
	// digest and the zTOC's ("sha256:<layer>/sha256:<ztoc>"; the checkpoint
	// windows that inflate uses are not covered by the span digests). Cache
	// keys are CacheKey + "/" + uncompressed range, so images sharing a
	// layer and its zTOC share cached spans, and a different zTOC for the
	// layer never reads or writes them.
	CacheKey     string
	FetchTimeout time.Duration // bound for one shared fetch (default 10s): a read fails with EIO within it when the registry is down
	MaxCoalesce  int64         // max compressed bytes fetched in one range request (default 16 MiB)
	// FailHold: a span whose fetch failed fails new reads at once for this
	// long (0: DefaultFailHold, negative: never).
	FailHold time.Duration
	// Now is the clock of the fail hold and of read-ahead runs; nil: time.Now.
	Now func() time.Time
	// Observer receives the latency of every FetchAt with its cache hits
	// and misses, and read failures; nil: none.
	Observer Observer
	// Demand is told while a FetchAt waits for the registry, so that
	// background work yields to it; nil: nobody is told.
	Demand Demand
	// KeepCompressed also caches the verified compressed bytes of spans
	// that reads fetch, so that a background walk can hash the whole blob
	// without fetching them again (see Compressed and DropCompressed).
	KeepCompressed bool
	// ReadAhead is how many uncompressed bytes past a sequential read are
	// fetched ahead of it (0: none). A read is sequential when it starts
	// near where the previous one ended, and read-ahead starts only once
	// such a run has crossed a span boundary, so that a few reads inside
	// one span (sparse access) fetch nothing more; the window grows with
	// the run (its length so far, up to ReadAhead); a pause ends a run. The spans ahead are
	// fetched in parallel requests of at most ReadAheadRequest compressed
	// bytes each (default DefaultReadAheadRequest; at least one span):
	// a registry link is often limited per connection.
	ReadAhead        int64
	ReadAheadRequest int64
	// SplitRequest, when > 0, splits a fetch of more compressed bytes than
	// that into up to MaxSplit parallel range requests of about that size
	// each (MaxSplit default 4): a read waiting for a 4 MiB span then gets
	// it over several connections, which matters on links limited per
	// connection (TCP windows over a long RTT, per-connection shaping).
	SplitRequest int64
	MaxSplit     int
	// Limit bounds the bytes being decompressed at once, shared by every
	// Manager of the node; a span longer than the bound alone is refused
	// (ErrTooLarge) without being fetched. nil: no bound.
	Limit *DecompressLimit
	// VerifyRetries is how many more times a span whose bytes fail
	// verification is fetched, alone, before its readers get the error
	// ([blob] max_span_verification_retries; 0: none).
	VerifyRetries int
}

// Observer receives metrics of reads. Failure kinds are "verification"
// and "fetch".
type Observer interface {
	ObserveRead(took time.Duration, hits, misses int)
	Failure(kind string)
}

// Demand counts reads waiting for the registry (demand fetches).
type Demand interface {
	BeginDemand()
	EndDemand()
}

// Manager serves uncompressed reads of one layer. It is safe for concurrent
// use.
type Manager struct {
	table       Table
	fetcher     Fetcher
	cache       Cache
	dec         Decompressor
	key         string
	keys        []string // cache key per span
	keepZ       bool     // Options.KeepCompressed
	timeout     time.Duration
	maxCoalesce int64
	failHold    time.Duration
	now         func() time.Time // Options.Now
	observer    Observer
	demand      Demand
	ahead       int64 // Options.ReadAhead
	aheadReq    int64 // Options.ReadAheadRequest
	split       int64 // Options.SplitRequest
	maxSplit    int   // Options.MaxSplit
	limit       *DecompressLimit
	retries     int // Options.VerifyRetries

	// life is the lifecycle of shared fetches (not a request context): it
	// is canceled by Close only.
	life context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu      sync.Mutex
	calls   []*call         // in-flight fetch per span; nil when none
	failed  map[int]failure // spans whose last fetch failed recently
	state   []state         // what is known about the cache, per span
	nCached int             // spans in state cached
	closed  bool
	refused map[int]bool // spans refused for their size, logged once
	// bad are the spans whose checkpoint window mismatched (see
	// condemn); poisoned is set when the layer was found bad (Poison).
	bad      map[int]error
	poisoned error
	winOK    []bool // spans whose window matched the previous span's bytes
	// lastEnd is where the previous read ended (-1: none); runStart is
	// the first span of the current run of sequential reads.
	lastEnd  int64
	runStart int
	runOff   int64     // where the current run began
	lastAt   time.Time // when the previous read came
}

// state is what a Manager knows about one span in the cache. A span with an
// in-flight call is being fetched whatever its state.
type state uint8

const (
	unknown state = iota // not fetched by this Manager; a previous run may have cached it
	missing              // not in the cache: fetch it
	cached               // in the cache
)

// call is one shared fetch of one span. data and err are written before done
// is closed and only read after.
type call struct {
	done chan struct{}
	data []byte
	err  error
	// reserved: a background walk fetches the span (see Reserve); Load
	// or Release completes the call.
	reserved bool
}

// New validates the options and returns a Manager; Close releases it.
func New(opts Options) (*Manager, error) {
	if err := opts.Table.Validate(); err != nil {
		return nil, fmt.Errorf("new span manager for %s: %w: %w", opts.CacheKey, errdefs.ErrInvalidArgument, err)
	}
	if err := opts.check(); err != nil {
		return nil, fmt.Errorf("new span manager for %s: %w: %w", opts.CacheKey, errdefs.ErrInvalidArgument, err)
	}
	n := len(opts.Table.Spans)
	m := &Manager{
		table: opts.Table, fetcher: opts.Fetcher, cache: opts.Cache, dec: opts.Decompressor,
		key: opts.CacheKey, keys: make([]string, n), keepZ: opts.KeepCompressed,
		timeout: opts.FetchTimeout, maxCoalesce: opts.MaxCoalesce,
		observer: opts.Observer, demand: opts.Demand,
		calls: make([]*call, n), state: make([]state, n), winOK: make([]bool, n),
		ahead: opts.ReadAhead, aheadReq: opts.ReadAheadRequest, lastEnd: -1,
		split: opts.SplitRequest, maxSplit: opts.MaxSplit, limit: opts.Limit,
		retries: max(opts.VerifyRetries, 0),
	}
	if m.maxSplit <= 0 {
		m.maxSplit = 4
	}
	if m.aheadReq <= 0 {
		m.aheadReq = DefaultReadAheadRequest
	}
	if m.timeout == 0 {
		m.timeout = DefaultFetchTimeout
	}
	if m.maxCoalesce == 0 {
		m.maxCoalesce = DefaultMaxCoalesce
	}
	m.failHold = opts.FailHold
	m.now = opts.Now
	if m.now == nil {
		m.now = time.Now
	}
	if m.failHold == 0 {
		m.failHold = DefaultFailHold
	}
	for i, s := range opts.Table.Spans {
		m.keys[i] = opts.CacheKey + "/" + strconv.FormatInt(s.UncompressedStart, 10) + "-" + strconv.FormatInt(s.UncompressedEnd, 10)
		if s.Len() == 0 {
			m.setState(i, cached) // nothing to fetch
		}
	}
	m.life, m.stop = context.WithCancel(context.Background())
	return m, nil
}

func (o Options) check() error {
	switch {
	case o.Fetcher == nil:
		return errors.New("no fetcher")
	case o.Cache == nil:
		return errors.New("no cache")
	case o.Decompressor == nil:
		return errors.New("no decompressor")
	case o.CacheKey == "":
		return errors.New("no cache key")
	case o.FetchTimeout < 0:
		return fmt.Errorf("negative fetch timeout %v", o.FetchTimeout)
	case o.MaxCoalesce < 0:
		return fmt.Errorf("negative max coalesce %d", o.MaxCoalesce)
	case o.ReadAhead < 0:
		return fmt.Errorf("negative read-ahead %d", o.ReadAhead)
	}
	return nil
}

// FetchAt reads len(p) uncompressed bytes at off with the io.ReaderAt
// contract: n < len(p) comes with an error, io.EOF at or after the end.
// Missing spans are fetched (adjacent ones in one request) and shared with
// concurrent readers; a canceled ctx stops waiting but not the fetch.
func (m *Manager) FetchAt(ctx context.Context, p []byte, off int64) (int, error) {
	size := m.table.UncompressedSize
	switch {
	case off < 0:
		return 0, fmt.Errorf("read %s at %d: negative offset: %w", m.key, off, errdefs.ErrInvalidArgument)
	case off >= size:
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("read %s at %d: %w", m.key, off, err)
	}
	end := min(off+int64(len(p)), size)
	first, last := m.table.Find(off), m.table.Find(end-1)
	m.probe(ctx, first, last)
	calls, err := m.plan(ctx, first, last)
	if err != nil {
		return 0, fmt.Errorf("read %s at %d: %w", m.key, off, err)
	}
	m.readAhead(ctx, off, end, first, last)
	if m.observer != nil || m.demand != nil {
		defer m.observe(time.Now(), calls)(&err)
	}
	dst := p[:end-off]
	n := 0
	for i := first; i <= last; i++ {
		var k int
		k, err = m.readSpan(ctx, i, calls[i-first], dst, off)
		calls[i-first] = nil // let the span data go as soon as it is copied
		n += k
		if err != nil {
			return n, err
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// observe reports a read that planned calls (nil: cached) to the Demand
// and the Observer: it marks a demand fetch in progress when any span is
// missing, and the returned func, deferred, ends it and records the read.
func (m *Manager) observe(start time.Time, calls []*call) func(*error) {
	misses := 0
	for _, c := range calls {
		if c != nil {
			misses++
		}
	}
	if misses > 0 && m.demand != nil {
		m.demand.BeginDemand()
	}
	return func(errp *error) {
		if misses > 0 && m.demand != nil {
			m.demand.EndDemand()
		}
		if m.observer == nil {
			return
		}
		m.observer.ObserveRead(time.Since(start), len(calls)-misses, misses)
		switch err := *errp; {
		case err == nil || errors.Is(err, context.Canceled) || errors.Is(err, ErrClosed):
		case errors.Is(err, ErrWindowMismatch) || errors.Is(err, ErrLayerBad): // counted when found
		case errors.Is(err, ErrVerification):
			m.observer.Failure("verification")
		default:
			m.observer.Failure("fetch")
		}
	}
}

// readSpan copies the part of span i that overlaps [off, off+len(dst)) into
// dst, from call c when the span is being fetched or from the cache when c is
// nil. A cache miss for a span thought cached triggers a refetch.
func (m *Manager) readSpan(ctx context.Context, i int, c *call, dst []byte, off int64) (int, error) {
	s := m.table.Spans[i]
	lo, hi := max(s.UncompressedStart, off), min(s.UncompressedEnd, off+int64(len(dst)))
	out, rel := dst[lo-off:hi-off], lo-s.UncompressedStart
	if len(out) == 0 {
		return 0, nil // an empty span
	}
	for attempt := 0; c == nil; attempt++ {
		if m.readCached(ctx, i, out, rel) {
			return len(out), nil
		}
		if attempt == maxCacheAttempts {
			return 0, fmt.Errorf("read span %d of %s: cache lost the span %d times: %w", i, m.key, attempt+1, errdefs.ErrDataLoss)
		}
		m.invalidate(i)
		calls, err := m.plan(ctx, i, i)
		if err != nil {
			return 0, fmt.Errorf("read span %d of %s: %w", i, m.key, err)
		}
		c = calls[0]
	}
	for attempt := 0; ; attempt++ {
		if err := wait(ctx, c); err != nil {
			return 0, fmt.Errorf("read span %d of %s: %w", i, m.key, err)
		}
		if !errors.Is(c.err, errReleased) || attempt == maxCacheAttempts {
			break
		}
		// A background walk gave up the span it had reserved: fetch it.
		calls, err := m.plan(ctx, i, i)
		if err != nil {
			return 0, fmt.Errorf("read span %d of %s: %w", i, m.key, err)
		}
		if calls[0] == nil {
			return m.readSpan(ctx, i, nil, dst, off) // the walk loaded it after all
		}
		c = calls[0]
	}
	if c.err != nil {
		return 0, c.err
	}
	return copy(out, c.data[rel:]), nil
}

// readCached fills out from the cached span i starting at rel and reports
// whether the cache had all of it.
func (m *Manager) readCached(ctx context.Context, i int, out []byte, rel int64) bool {
	key := m.keys[i]
	var err error
	if rc, ok := m.cache.(RangeCache); ok {
		var n int
		n, err = rc.GetAt(key, out, rel)
		if n == len(out) {
			return true
		}
	} else {
		var data []byte
		data, err = m.cache.Get(key)
		if err == nil && int64(len(data)) == m.table.Spans[i].Len() {
			copy(out, data[rel:])
			return true
		}
	}
	log.G(ctx).WithError(err).WithField("layer", m.key).WithField("span", i).Debug("cached span missing or short, refetching")
	return false
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

// Cached reports how many of the layer's spans are known to be in the cache
// (empty spans count as cached). Spans cached by an earlier Manager (a
// restart) count once a read has looked at them.
func (m *Manager) Cached() (spans, total int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nCached, len(m.table.Spans)
}

// Close cancels in-flight shared fetches, waits for their goroutines and
// makes later reads fail with ErrClosed. The cache is left as it is.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.stop()
	m.wg.Wait()
	return nil
}
