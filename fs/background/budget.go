package background

import (
	"context"
	"sync"
	"sync/atomic"
)

// budget bounds the compressed bytes the walks of a node hold at once:
// chunks fetched and not yet both loaded and consumed by the stream
// cross-check. A chunk larger than the whole budget goes alone.
type budget struct {
	max int64

	mu      sync.Mutex
	used    int64
	changed chan struct{} // closed and replaced when used drops
}

func newBudget(max int64) *budget {
	return &budget{max: max, changed: make(chan struct{})}
}

// acquire waits until n bytes fit in the budget (or nothing is held) and
// takes them; beforeWait (nil: none) is called once if it has to wait.
func (b *budget) acquire(ctx context.Context, n int64, beforeWait func()) error {
	for {
		b.mu.Lock()
		if b.used == 0 || b.used+n <= b.max {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		ch := b.changed
		b.mu.Unlock()
		if beforeWait != nil {
			beforeWait()
			beforeWait = nil
			continue // it may have let go of bytes
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	close(b.changed)
	b.changed = make(chan struct{})
	b.mu.Unlock()
}

// inUse reports the bytes held.
func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// chunkHold is one chunk's share of the budget, held by the walk until it
// loaded the chunk and, when the chunk was fed to the stream cross-check,
// by the check until it consumed it. Each holder lets go once; the share
// returns to the budget when both did.
type chunkHold struct {
	b            *budget
	n            int64
	refs         atomic.Int32
	walk, stream sync.Once
}

// hold takes n bytes for a chunk held by the walk and the check, calling
// beforeWait (nil: none) once if it has to wait.
func (b *budget) hold(ctx context.Context, n int64, beforeWait func()) (*chunkHold, error) {
	if err := b.acquire(ctx, n, beforeWait); err != nil {
		return nil, err
	}
	h := &chunkHold{b: b, n: n}
	h.refs.Store(2)
	return h, nil
}

func (h *chunkHold) unref() {
	if h.refs.Add(-1) == 0 {
		h.b.release(h.n)
	}
}

// walkDone and streamDone let go of the walk's and the check's share.
func (h *chunkHold) walkDone()   { h.walk.Do(h.unref) }
func (h *chunkHold) streamDone() { h.stream.Do(h.unref) }
