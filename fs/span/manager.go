package span

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containerd/errdefs"
)

// Fetcher reads compressed bytes of the layer blob from the registry
// (io.ReaderAt contract plus ctx). It should honour ctx: a fetch that ignores
// it is abandoned at the deadline but keeps its goroutine until it returns.
type Fetcher interface {
	FetchAt(ctx context.Context, p []byte, off int64) (int, error)
}

// Cache stores uncompressed span data. Get returns an error wrapping
// errdefs.ErrNotFound on a miss. GetAt reads part of an entry without
// loading all of it (io.ReaderAt contract), so that a 4 KiB read does not
// load a whole span. Remove drops the entry key and every entry under
// key + "/" (a missing key is not an error).
type Cache interface {
	Get(key string) ([]byte, error)
	GetAt(key string, p []byte, off int64) (int, error)
	Put(key string, data []byte) error
	Remove(key string) error
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
	// Demand is told while a FetchAt waits for the registry and while a
	// fetch ahead of reads (read-ahead, neighbours) runs, so that
	// background work yields to them; nil: nobody is told.
	Demand Demand
	// Tracer is told the spans each FetchAt (a demand read) needs, cached
	// or not; never those of read-ahead, Prefetch or the Loader. nil: none.
	Tracer Tracer
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
	// Neighbours, when > 0, is how many compressed bytes on either side
	// of a read that missed the cache are fetched once the layer's reads
	// have missed at two places apart (scattered reads: a program loading
	// its modules one after another; the miss that shows it fetches around
	// the previous miss too), in requests of at most ReadAheadRequest.
	// They are started once the read that missed has its own spans
	// (demand first).
	Neighbours int64
	// SplitRequest, when > 0, splits a fetch of more compressed bytes than
	// that into up to MaxSplit parallel range requests of about that size
	// each (MaxSplit default 4): a read waiting for a 4 MiB span then gets
	// it over several connections, which matters on links limited per
	// connection (TCP windows over a long RTT, per-connection shaping).
	// Fetches ahead of reads (read-ahead, neighbours) are not split.
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

// Tracer records the spans demand reads need ([prefetch] record).
type Tracer interface {
	DemandRead(first, last int)
}

// Demand counts reads waiting for the registry (demand fetches).
type Demand interface {
	BeginDemand()
	EndDemand()
}

// Preempter is a Demand that also stops lower-priority fetches in flight
// (the background walk's chunks) when the core starts a fetch for reads (a
// miss, read-ahead or neighbours) or a read starts waiting for a chunk of
// the walk (Loader.Waited tells the walk which chunks to spare).
type Preempter interface {
	Preempt()
}

// Manager serves uncompressed reads of one layer. It is safe for concurrent
// use. It is the front of three parts: the fetch core (single-flight
// fetches, verification, inflate, cache fill), the read-ahead policy, and
// the Loader through which the background walk reaches the same core.
type Manager struct {
	c        *core
	ahead    *readAhead
	near     *neighbours
	loader   Loader
	observer Observer
	demand   Demand
	tracer   Tracer
	// prefetch sizes Prefetch's requests (see PrefetchRequestBytes).
	prefetch prefetchLimits
}

// maxCacheAttempts bounds how often one read retries a span that was thought
// cached but is missing from the cache.
const maxCacheAttempts = 3

// New validates the options and returns a Manager; Close releases it.
func New(opts Options) (*Manager, error) {
	if err := opts.Table.Validate(); err != nil {
		return nil, fmt.Errorf("new span manager for %s: %w: %w", opts.CacheKey, errdefs.ErrInvalidArgument, err)
	}
	if err := opts.check(); err != nil {
		return nil, fmt.Errorf("new span manager for %s: %w: %w", opts.CacheKey, errdefs.ErrInvalidArgument, err)
	}
	c := newCore(opts)
	return &Manager{c: c, ahead: newReadAhead(opts), near: newNeighbours(opts), loader: Loader{c: c}, observer: opts.Observer, demand: opts.Demand, tracer: opts.Tracer,
		prefetch: prefetchLimits{request: PrefetchRequestBytes, window: PrefetchWindowBytes}}, nil
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
	case o.Neighbours < 0:
		return fmt.Errorf("negative neighbours %d", o.Neighbours)
	}
	return nil
}

// FetchAt reads len(p) uncompressed bytes at off with the io.ReaderAt
// contract: n < len(p) comes with an error, io.EOF at or after the end.
// Missing spans are fetched (adjacent ones in one request) and shared with
// concurrent readers; a canceled ctx stops waiting but not the fetch.
func (m *Manager) FetchAt(ctx context.Context, p []byte, off int64) (int, error) {
	c := m.c
	size := c.table.UncompressedSize
	switch {
	case off < 0:
		return 0, fmt.Errorf("read %s at %d: negative offset: %w", c.key, off, errdefs.ErrInvalidArgument)
	case off >= size:
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("read %s at %d: %w", c.key, off, err)
	}
	end := min(off+int64(len(p)), size)
	first, last := c.table.Find(off), c.table.Find(end-1)
	if m.tracer != nil {
		m.tracer.DemandRead(first, last)
	}
	c.probe(ctx, first, last)
	calls, err := c.plan(ctx, first, last)
	if err != nil {
		return 0, fmt.Errorf("read %s at %d: %w", c.key, off, err)
	}
	if from, to := m.ahead.next(c.table, off, end, first, last); from <= to {
		c.fetchAhead(ctx, from, to, m.ahead.req)
	}
	if calls != nil {
		defer m.ahead.done() // only a read that waited can have paused
		if near := m.near.next(c.table, first, last); near != nil {
			defer func() { // after the read's own spans
				for _, r := range near {
					c.fetchAhead(ctx, r.from, r.to, m.ahead.req)
				}
			}()
		}
	}
	if m.observer == nil && m.demand == nil {
		return m.copyOut(ctx, calls, first, last, p, off, end)
	}
	done := m.observe(time.Now(), calls, last-first+1)
	n, err := m.copyOut(ctx, calls, first, last, p, off, end)
	done(err)
	return n, err
}

// copyOut copies [off, end) of spans first to last into p, from their
// calls (see plan) or the cache.
func (m *Manager) copyOut(ctx context.Context, calls []*call, first, last int, p []byte, off, end int64) (int, error) {
	dst := p[:end-off]
	n := 0
	for i := first; i <= last; i++ {
		k, err := m.readSpan(ctx, i, callAt(calls, i-first), dst, off)
		if calls != nil {
			calls[i-first] = nil // let the span data go as soon as it is copied
		}
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

// observe reports a read of n spans that planned calls (nil: cached) to
// the Demand and the Observer: it marks a demand fetch in progress when any
// span is missing, and the returned func, called with the read's error,
// ends it and records the read.
func (m *Manager) observe(start time.Time, calls []*call, n int) func(error) {
	misses := 0
	for _, c := range calls {
		if c != nil {
			misses++
		}
	}
	if misses > 0 && m.demand != nil {
		m.demand.BeginDemand()
	}
	return func(err error) {
		if misses > 0 && m.demand != nil {
			m.demand.EndDemand()
		}
		if m.observer == nil {
			return
		}
		m.observer.ObserveRead(time.Since(start), n-misses, misses)
		switch {
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
// dst, from call cl when the span is being fetched or from the cache when cl
// is nil. A cache miss for a span thought cached triggers a refetch.
func (m *Manager) readSpan(ctx context.Context, i int, cl *call, dst []byte, off int64) (int, error) {
	c := m.c
	s := c.table.Spans[i]
	lo, hi := max(s.UncompressedStart, off), min(s.UncompressedEnd, off+int64(len(dst)))
	out, rel := dst[lo-off:hi-off], lo-s.UncompressedStart
	if len(out) == 0 {
		return 0, nil // an empty span
	}
	for attempt := 0; cl == nil; attempt++ {
		if c.readCached(ctx, i, out, rel) {
			return len(out), nil
		}
		if attempt == maxCacheAttempts {
			return 0, fmt.Errorf("read span %d of %s: cache lost the span %d times: %w", i, c.key, attempt+1, errdefs.ErrDataLoss)
		}
		c.invalidate(i)
		calls, err := c.plan(ctx, i, i)
		if err != nil {
			return 0, fmt.Errorf("read span %d of %s: %w", i, c.key, err)
		}
		cl = callAt(calls, 0)
	}
	for attempt := 0; ; attempt++ {
		if err := wait(ctx, cl); err != nil {
			return 0, fmt.Errorf("read span %d of %s: %w", i, c.key, err)
		}
		if !errors.Is(cl.err, errReleased) || attempt == maxCacheAttempts {
			break
		}
		// A background walk gave up the span it had reserved: fetch it.
		calls, err := c.plan(ctx, i, i)
		if err != nil {
			return 0, fmt.Errorf("read span %d of %s: %w", i, c.key, err)
		}
		if callAt(calls, 0) == nil {
			return m.readSpan(ctx, i, nil, dst, off) // the walk loaded it after all
		}
		cl = calls[0]
	}
	if cl.err != nil {
		return 0, cl.err
	}
	return copy(out, cl.data[rel:]), nil
}

// Cached reports how many of the layer's spans are known to be in the cache
// (empty spans count as cached). Spans cached by an earlier Manager (a
// restart) count once a read has looked at them.
func (m *Manager) Cached() (spans, total int) { return m.c.cached() }

// Poison takes the layer out of service because it was found to contradict
// its zTOC (the background walk's cross-check): every later read and
// Load fails with an error wrapping ErrLayerBad, and the layer's cached
// spans are removed. It logs once; later calls do nothing.
func (m *Manager) Poison(ctx context.Context, reason error) { m.c.poison(ctx, reason) }

// Loader returns the background walk's access to the layer's spans.
func (m *Manager) Loader() *Loader { return &m.loader }

// Close cancels in-flight shared fetches, waits for their goroutines and
// makes later reads fail with ErrClosed. The cache is left as it is.
func (m *Manager) Close() error {
	m.c.close()
	return nil
}
