package span

import (
	"cmp"
	"context"
	"errors"
	"fmt"

	"github.com/containerd/log"
)

// Loader is the background walk's access to a layer's spans (step 6 of
// docs/architecture.md; fs/background consumes it): the walk reads the blob
// in order itself, to hash the whole layer, and hands the bytes to the same
// fetch core that serves reads, instead of having them fetched twice. It
// reserves the spans it is about to fetch, loads them from its bytes, asks
// what is local, hashes the compressed copies reads kept, and reads cached
// spans back for its cross-check. Get one with Manager.Loader.
type Loader struct{ c *core }

// Load makes spans [first, last] local from compressed bytes the caller
// already fetched: compressed holds blob[base : base+len(compressed)] and
// must cover every span in the range.
//
// Each span is verified, decompressed and cached exactly as a fetched one.
// Spans already cached or being fetched by a reader are skipped; readers
// that ask for a span while Load works on it wait for Load. It returns the
// first span's error, after trying all of them.
func (l *Loader) Load(ctx context.Context, first, last int, compressed []byte, base int64) error {
	c := l.c
	if first < 0 || last >= len(c.table.Spans) || first > last {
		return fmt.Errorf("load spans %d-%d of %s: out of range", first, last, c.key)
	}
	spans := c.table.Spans
	if base > spans[first].CompressedStart || base+int64(len(compressed)) < spans[last].CompressedEnd {
		return fmt.Errorf("load spans %d-%d of %s: bytes [%d, %d) do not cover [%d, %d)", first, last, c.key,
			base, base+int64(len(compressed)), spans[first].CompressedStart, spans[last].CompressedEnd)
	}
	c.probe(ctx, first, last)
	c.mu.Lock()
	if c.closed || c.poisoned != nil {
		err := cmp.Or(c.poisoned, ErrClosed)
		c.mu.Unlock()
		return fmt.Errorf("load spans %d-%d of %s: %w", first, last, c.key, err)
	}
	var mine []int
	for i := first; i <= last; i++ {
		switch {
		case c.calls[i] != nil && c.calls[i].reserved:
			mine = append(mine, i) // reserved by the caller
		case c.state[i] != cached && c.calls[i] == nil:
			c.calls[i] = &call{done: make(chan struct{})}
			mine = append(mine, i)
		}
	}
	c.mu.Unlock()
	var firstErr error
	for _, i := range mine {
		s := spans[i]
		data, stored, err := c.load(ctx, i, compressed[s.CompressedStart-base:s.CompressedEnd-base])
		c.finish(i, data, err, stored)
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// errReleased completes the calls of spans a background walk reserved and
// then gave up; their readers fetch the span themselves.
var errReleased = errors.New("span reservation released")

// Reserve marks spans first, first+1, ... up to last as being fetched by
// the caller (a background walk about to fetch them in one request), so
// that reads of them wait for its Load instead of fetching the same bytes
// again. It stops at the first span that is cached or already being
// fetched, and returns the last span reserved, or first-1 when none was.
// Every reserved span must be completed by Load or Release.
func (l *Loader) Reserve(ctx context.Context, first, last int) int {
	c := l.c
	if first < 0 || last >= len(c.table.Spans) || first > last {
		return first - 1
	}
	c.probe(ctx, first, last)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.poisoned != nil {
		return first - 1
	}
	i := first
	for ; i <= last && c.state[i] != cached && c.calls[i] == nil; i++ {
		c.calls[i] = &call{done: make(chan struct{}), reserved: true}
	}
	return i - 1
}

// Waited reports whether a read (or a read-ahead on behalf of reads) waits
// for one of the spans [first, last] the walk reserved, or for span first-1
// while the walk still holds it: a preemption (Preempter) spares their
// chunk. The walk's stream holds the
// end of a span back until it decodes the next chunk's first bytes, so a
// read of the span before a chunk waits for that chunk too; stopping it
// would throw its bytes away and inflate the span from its checkpoint.
func (l *Loader) Waited(first, last int) bool {
	c := l.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := max(first-1, 0); i <= last && i < len(c.calls); i++ {
		if cl := c.calls[i]; cl != nil && cl.reserved && cl.waited {
			return true
		}
	}
	return false
}

// Release gives up the reservations of spans [first, last] that Load has
// not completed: readers waiting for them fetch them themselves.
func (l *Loader) Release(first, last int) {
	c := l.c
	c.mu.Lock()
	var gone []*call
	for i := max(first, 0); i <= last && i < len(c.calls); i++ {
		if cl := c.calls[i]; cl != nil && cl.reserved {
			c.calls[i] = nil
			gone = append(gone, cl)
		}
	}
	c.mu.Unlock()
	for _, cl := range gone {
		cl.err = errReleased
		close(cl.done)
	}
}

// Complete reports whether every span of the layer is in the cache, asking
// the cache about spans the core has not seen yet (one small read each).
func (l *Loader) Complete(ctx context.Context) bool {
	l.c.probe(ctx, 0, len(l.c.table.Spans)-1)
	spans, total := l.c.cached()
	return spans == total
}

// Has reports whether span i is cached or being fetched by a reader, so a
// background walk need not fetch it again.
func (l *Loader) Has(ctx context.Context, i int) bool {
	c := l.c
	c.probe(ctx, i, i)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state[i] == cached || c.calls[i] != nil
}

// Compressed returns the compressed bytes of span i kept by a read's fetch
// (Options.KeepCompressed), verified again against the span digest; ok is
// false when none are kept. When a read's fetch of the span is in flight,
// or its copy is being written, it waits for it (as long as ctx allows):
// the walk, right behind a read-ahead, would otherwise download the span a
// second time to hash it.
func (l *Loader) Compressed(ctx context.Context, i int) ([]byte, bool) {
	c := l.c
	if !c.keepZ || i < 0 || i >= len(c.table.Spans) {
		return nil, false
	}
	c.mu.Lock()
	cl := c.calls[i]
	c.mu.Unlock()
	if cl != nil && !cl.reserved {
		if wait(ctx, cl) != nil {
			return nil, false
		}
	}
	if ch := c.keptWait(i); ch != nil { // written after the readers got the span
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, false
		}
	}
	data, err := c.cache.Get(c.compressedKey(i))
	if err != nil || c.table.Spans[i].Digest.Algorithm().FromBytes(data) != c.table.Spans[i].Digest {
		return nil, false
	}
	return data, true
}

// DropCompressed forgets the compressed copies kept for the background
// walk, once it has hashed the blob.
func (l *Loader) DropCompressed(ctx context.Context) {
	c := l.c
	if !c.keepZ {
		return
	}
	if err := c.cache.Remove(c.key + "/z"); err != nil {
		log.G(ctx).WithError(err).Debug("cannot drop compressed spans")
	}
}

// ReadCached fills p with the cached uncompressed bytes of span i from rel
// bytes into the span and reports whether the cache held all of them. It
// never fetches, reads ahead or counts a read: the background walk compares
// the cached spans with the real layer stream through it.
func (l *Loader) ReadCached(ctx context.Context, i int, p []byte, rel int64) bool {
	c := l.c
	if i < 0 || i >= len(c.table.Spans) || rel < 0 || rel > c.table.Spans[i].Len()-int64(len(p)) {
		return false
	}
	c.mu.Lock()
	bad := c.poisoned != nil || c.bad[i] != nil
	c.mu.Unlock()
	if bad {
		return false
	}
	if len(p) == 0 {
		return true
	}
	return c.readCached(ctx, i, p, rel)
}

// LoadPlain completes span i, which the caller reserved, with plain: its
// uncompressed bytes taken from the layer's own stream (the background walk
// inflates the blob once, in order, for its cross-check), after the caller
// checked the span's compressed bytes against the span digest. Nothing is
// inflated from a checkpoint and no window is checked: the bytes are the
// layer's, not a checkpoint's reconstruction of them. They are cached and
// handed to the readers waiting for the span, so plain must not be
// modified afterwards. A span the caller did not reserve is an error and is
// left alone.
func (l *Loader) LoadPlain(ctx context.Context, i int, plain []byte) error {
	c := l.c
	if i < 0 || i >= len(c.table.Spans) {
		return fmt.Errorf("load span %d of %s from the stream: out of range", i, c.key)
	}
	c.mu.Lock()
	cl := c.calls[i]
	c.mu.Unlock()
	if cl == nil || !cl.reserved {
		return fmt.Errorf("load span %d of %s from the stream: not reserved", i, c.key)
	}
	var err error
	stored := false
	switch n := c.table.Spans[i].Len(); {
	case int64(len(plain)) != n:
		err = fmt.Errorf("load span %d of %s from the stream: %d bytes, want %d", i, c.key, len(plain), n)
	default:
		err = c.badSpan(i)
	}
	if err == nil {
		stored = c.store(ctx, i, plain)
	} else {
		plain = nil
	}
	if !c.finishOwn(i, cl, plain, err, stored) {
		return fmt.Errorf("load span %d of %s from the stream: reservation released meanwhile", i, c.key)
	}
	return err
}
