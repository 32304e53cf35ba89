package span

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/log"
	"golang.org/x/sync/semaphore"
)

// PrefetchSlots bounds the prefetch requests in flight, shared by the
// Prefetch calls of every layer of a node ([prefetch] max_concurrency). A
// nil *PrefetchSlots is no bound of its own: the registry client's
// node-wide request slots still apply.
type PrefetchSlots struct {
	ch chan struct{}
	// waiting, when set, is called each time an acquire finds every slot
	// taken and waits (tests).
	waiting func()
}

// NewPrefetchSlots returns a bound of n requests at once; n <= 0 is none
// (nil).
func NewPrefetchSlots(n int) *PrefetchSlots {
	if n <= 0 {
		return nil
	}
	return &PrefetchSlots{ch: make(chan struct{}, n)}
}

func (s *PrefetchSlots) acquire(ctx context.Context) error {
	if s == nil {
		return ctx.Err()
	}
	select {
	case s.ch <- struct{}{}:
		return nil
	default:
	}
	if s.waiting != nil {
		s.waiting()
	}
	select {
	case s.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *PrefetchSlots) release() {
	if s != nil {
		<-s.ch
	}
}

// PrefetchResult is what one Prefetch did.
type PrefetchResult struct {
	// Spans and Bytes are the spans this Prefetch fetched and made local,
	// and their compressed bytes.
	Spans int
	Bytes int64
	// Requests is the number of range requests it made.
	Requests int
	// Joined are spans another fetch (a read, read-ahead, the background
	// walk) was already loading; Prefetch waited for them.
	Joined int
	// Failed are spans that did not load (fetch or verification failure,
	// a recent failure, too large to decompress, a bad span).
	Failed int
}

// Prefetch's requests are smaller than a read's (MaxCoalesce, 16 MiB by
// default), and only so many bytes of them are in flight per layer. The
// fetch core verifies, inflates and caches a request's spans one after
// another once all of its bytes are in: in requests of
// PrefetchRequestBytes a span is loaded soon after its own bytes arrive,
// while later requests are still on the link, instead of after the whole
// run's; PrefetchWindowBytes of requests (four large ones, or many small
// ones, which then do not wait a round trip each) keep a shared link busy
// while bounding the buffers they hold (listed spans of a layer all at
// once in 16 MiB requests cost the FUSE host about 75 MB more peak RSS on
// the many-files bench).
const (
	// PrefetchRequestBytes bounds the compressed bytes of one prefetch
	// request (a larger span goes alone).
	PrefetchRequestBytes int64 = 4 << 20
	// PrefetchWindowBytes bounds the compressed bytes of the prefetch
	// requests of one Prefetch call in flight, started in the list's
	// order (a larger request goes alone).
	PrefetchWindowBytes int64 = 16 << 20
)

// prefetchLimits are a Manager's PrefetchRequestBytes and
// PrefetchWindowBytes (tests use smaller ones).
type prefetchLimits struct {
	request, window int64
}

// ErrPrefetchSpans is wrapped by Prefetch's error for a span list that is
// not ascending, has duplicates or names a span the table does not have.
var ErrPrefetchSpans = errors.New("invalid prefetch span list")

// Prefetch makes the spans idx (ascending span indices, each once) local
// ahead of reads, through the same fetch core as reads: adjacent spans in
// one range request (Table.Run, at most PrefetchRequestBytes and
// MaxCoalesce compressed bytes; a gap always ends a request), verified,
// inflated and cached, at most PrefetchWindowBytes of requests in flight,
// started in the list's order. Each request also holds one of slots for its whole
// fetch, so at most that many are in flight across every layer sharing
// slots; requests are never split.
// Spans cached, or being fetched already, are not fetched again; reads that
// want a span Prefetch is fetching wait for it (single-flight).
//
// It returns once every span it asked for is done or ctx ends (then with
// ctx's error); a fetch already started keeps running for its readers until
// the Manager is closed. Failed spans are counted, not returned as errors.
func (m *Manager) Prefetch(ctx context.Context, idx []int, slots *PrefetchSlots) (PrefetchResult, error) {
	c := m.c
	var res PrefetchResult
	for k, i := range idx {
		if i < 0 || i >= len(c.table.Spans) || (k > 0 && i <= idx[k-1]) {
			return res, fmt.Errorf("prefetch spans of %s: span %d at position %d: %w", c.key, i, k, ErrPrefetchSpans)
		}
	}
	// Learn what earlier runs cached, one group of consecutive spans at
	// a time (never the spans between groups).
	for k := 0; k < len(idx); {
		n := k + 1
		for n < len(idx) && idx[n] == idx[n-1]+1 {
			n++
		}
		c.probe(ctx, idx[k], idx[n-1])
		k = n
	}
	type waiter struct {
		cl   *call
		i    int
		mine bool
	}
	var waits []waiter
	var stop error
	windowBytes := max(m.prefetch.window, 1)
	window := semaphore.NewWeighted(windowBytes)
	for pos := 0; pos < len(idx) && stop == nil; {
		// The next request's bytes are known only under mu; room for
		// the largest one is taken first and the excess given back.
		take := min(windowBytes, max(m.prefetch.request, 1))
		if err := window.Acquire(ctx, take); err != nil {
			stop = err
			break
		}
		if err := slots.acquire(ctx); err != nil {
			window.Release(take)
			stop = err
			break
		}
		c.mu.Lock()
		if c.closed || c.poisoned != nil {
			stop = ErrClosed
			if c.poisoned != nil {
				stop = c.poisoned
			}
			c.mu.Unlock()
			slots.release()
			window.Release(take)
			break
		}
		// Skip to the next span to fetch, noting those to wait for.
		for ; pos < len(idx); pos++ {
			i := idx[pos]
			if cl := c.calls[i]; cl != nil {
				waits = append(waits, waiter{cl: cl, i: i})
				continue
			}
			if !c.wantPrefetch(ctx, i) {
				if c.state[i] != cached {
					res.Failed++
				}
				continue
			}
			break
		}
		if pos == len(idx) {
			c.mu.Unlock()
			slots.release()
			window.Release(take)
			break
		}
		first, end := idx[pos], pos
		for end+1 < len(idx) && idx[end+1] == idx[end]+1 && c.calls[idx[end+1]] == nil && c.wantPrefetch(ctx, idx[end+1]) {
			end++
		}
		last := c.table.Run(first, idx[end], min(c.maxCoalesce, max(m.prefetch.request, 1)), CompressedBytes)
		held := min(take, c.table.Spans[last].CompressedEnd-c.table.Spans[first].CompressedStart)
		window.Release(take - held)
		for i := first; i <= last; i++ {
			cl := &call{done: make(chan struct{})}
			c.calls[i] = cl
			waits = append(waits, waiter{cl: cl, i: i, mine: true})
		}
		pos += last - first + 1
		res.Requests++
		c.wg.Add(1)
		c.mu.Unlock()
		go func() {
			defer c.wg.Done()
			defer window.Release(held)
			defer slots.release()
			start := c.hold.now()
			c.fetch(first, last, 0)
			log.G(ctx).WithField("layer", c.key).WithField("spans", fmt.Sprintf("%d-%d", first, last)).
				WithField("bytes", c.table.Spans[last].CompressedEnd-c.table.Spans[first].CompressedStart).
				WithField("took", c.hold.now().Sub(start)).Debug("prefetch request done")
		}()
	}
	for _, w := range waits {
		if err := wait(ctx, w.cl); err != nil {
			return res, fmt.Errorf("prefetch spans of %s: %w", c.key, err)
		}
		switch {
		case w.cl.err != nil:
			res.Failed++
		case w.mine:
			s := c.table.Spans[w.i]
			res.Spans++
			res.Bytes += s.CompressedEnd - s.CompressedStart
		default:
			res.Joined++
		}
	}
	if stop != nil {
		return res, fmt.Errorf("prefetch spans of %s: %w", c.key, stop)
	}
	return res, nil
}

// wantPrefetch reports whether span i, not being fetched, should be fetched
// by a prefetch: not cached, not bad, not failed recently, not too large to
// decompress. Callers hold mu.
func (c *core) wantPrefetch(ctx context.Context, i int) bool {
	switch {
	case c.state[i] == cached || c.bad[i] != nil || c.hold.recent(i) != nil:
		return false
	case c.tooLarge(ctx, i) != nil:
		return false
	}
	return true
}
