package background

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
)

// budget bounds the compressed bytes the walks of a node hold at once:
// chunks fetched and not yet both loaded and consumed by the stream
// cross-check. A chunk larger than the whole budget goes alone.
//
// It also keeps the buffers of chunks let go of, for the next chunks: the
// walks of a node then reuse a few buffers instead of allocating one per
// chunk (the garbage collector's work grows with what is allocated). The
// bytes held and the free buffers' capacity together stay within max, so
// the free buffers never raise the peak the budget allows.
type budget struct {
	max int64

	mu        sync.Mutex
	used      int64
	changed   chan struct{} // closed and replaced when used drops
	free      [][]byte      // buffers of chunks let go of
	freeBytes int64         // their capacity
}

// bufRound is what new chunk buffers' capacities are rounded up to, so that
// a buffer fits the next chunks, whose compressed sizes differ a little.
const bufRound = 1 << 20

func newBudget(max int64) *budget {
	return &budget{max: max, changed: make(chan struct{})}
}

// acquire waits until n bytes fit in the budget (or nothing is held) and
// takes them.
func (b *budget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.used == 0 || b.used+n <= b.max {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		ch := b.changed
		b.mu.Unlock()
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

// buffer returns a buffer of n bytes: the smallest free one large enough,
// else a new one. Its bytes are not zeroed.
func (b *budget) buffer(n int64) []byte {
	b.mu.Lock()
	best := -1
	for i, f := range b.free {
		if int64(cap(f)) >= n && (best < 0 || cap(f) < cap(b.free[best])) {
			best = i
		}
	}
	if best >= 0 {
		f := b.free[best]
		b.free = slices.Delete(b.free, best, best+1)
		b.freeBytes -= int64(cap(f))
		b.mu.Unlock()
		return f[:n]
	}
	b.mu.Unlock()
	return make([]byte, n, (n+bufRound-1)/bufRound*bufRound)
}

// recycle keeps buf, which nobody uses any more, for a later chunk if it
// fits within max beside the bytes held and the other free buffers.
func (b *budget) recycle(buf []byte) {
	if buf == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+b.freeBytes+int64(cap(buf)) <= b.max {
		b.free = append(b.free, buf[:0])
		b.freeBytes += int64(cap(buf))
	}
}

// trim drops the free buffers (when no walk runs).
func (b *budget) trim() {
	b.mu.Lock()
	b.free, b.freeBytes = nil, 0
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
//
// The hold comes with the chunk's buffer (buf), which goes back to the
// budget's free buffers when both let go: neither may use it after.
type chunkHold struct {
	b            *budget
	n            int64
	buf          []byte // n bytes; nil until bytes asks for it
	refs         atomic.Int32
	walk, stream sync.Once
}

// hold takes n bytes for a chunk held by the walk and the check.
func (b *budget) hold(ctx context.Context, n int64) (*chunkHold, error) {
	if err := b.acquire(ctx, n); err != nil {
		return nil, err
	}
	h := &chunkHold{b: b, n: n}
	h.refs.Store(2)
	return h, nil
}

// bytes returns the first m (<= n) bytes of the chunk's buffer, for the
// walk to fetch into; called once, before either holder lets go.
func (h *chunkHold) bytes(m int64) []byte {
	if h.buf == nil {
		h.buf = h.b.buffer(h.n)
	}
	return h.buf[:m]
}

func (h *chunkHold) unref() {
	if h.refs.Add(-1) == 0 {
		h.b.release(h.n)
		h.b.recycle(h.buf)
	}
}

// walkDone and streamDone let go of the walk's and the check's share.
func (h *chunkHold) walkDone()   { h.walk.Do(h.unref) }
func (h *chunkHold) streamDone() { h.stream.Do(h.unref) }
