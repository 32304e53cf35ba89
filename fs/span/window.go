package span

import (
	"context"
	"crypto/sha256"
	"fmt"

	"github.com/containerd/log"
)

// Checkpoint windows. Decompressing a gzip span starts from its
// checkpoint's 32 KiB inflate window, which the span digest does not cover,
// so a hostile zTOC could make a span inflate to other bytes than the
// layer's. The window is the last WindowSize bytes of the tar stream before
// the span (zero-filled in front near the start), so it can be checked
// against the previous span's bytes whenever those are at hand: decompressed
// in the same batch, or in the cache. A span whose window does not match is
// never served or cached (ErrWindowMismatch) and its reads fail from then
// on. A span whose predecessor is not at hand is served unchecked: it is
// checked when the predecessor is decompressed (and removed from the cache
// if it then mismatches), and the background walk compares every cached
// span with the real layer once it is local (see Poison). A window that the
// predecessor alone cannot supply (a span shorter than a window before it)
// is not checked here.

// ErrWindowMismatch is wrapped by errors for a span whose checkpoint window
// contradicts the bytes before it: the zTOC is bad.
var ErrWindowMismatch = fmt.Errorf("checkpoint window mismatch: %w", ErrVerification)

// ErrLayerBad is wrapped by errors for reads of a layer that Poison has
// taken out of service.
var ErrLayerBad = fmt.Errorf("layer contradicts its zTOC: %w", ErrVerification)

// FailureWindowMismatch is the Observer failure kind of a span found with a
// checkpoint window that contradicts its predecessor (counted once per span
// found; reads failing on it later are not counted again).
const FailureWindowMismatch = "window_mismatch"

// WindowDigest returns the sha256 of the window a span starting at start
// needs (Span.Window), from tail, the bytes of the stream just before
// start; ok is false when tail holds fewer than the window needs.
func WindowDigest(start int64, tail []byte) (sum [32]byte, ok bool) {
	need := min(start, WindowSize)
	if need > int64(len(tail)) {
		return sum, false
	}
	h := sha256.New()
	var zeros [4096]byte
	for z := WindowSize - need; z > 0; z -= int64(len(zeros)) {
		h.Write(zeros[:min(z, int64(len(zeros)))])
	}
	h.Write(tail[int64(len(tail))-need:])
	return [32]byte(h.Sum(nil)), true
}

// checkWindows checks the windows around span i, which just decompressed
// to data: span i's own against the previous span's cached bytes (unless
// the previous span's load matched it already), which fails the load, and
// span i+1's against data, which takes span i+1 out of service on a
// mismatch. Spans decompressed in order (a batch, the background walk)
// thus cost one window hash each.
func (c *core) checkWindows(ctx context.Context, i int, data []byte) error {
	spans := c.table.Spans
	c.mu.Lock()
	checked := c.winOK[i]
	c.mu.Unlock()
	if s := spans[i]; s.HasWindow && !checked {
		if want, ok := c.windowBefore(i); ok && want != s.Window {
			err := fmt.Errorf("span %d of %s: %w", i, c.key, ErrWindowMismatch)
			c.condemn(ctx, i, err)
			return err
		}
	}
	if i+1 < len(spans) && spans[i+1].HasWindow {
		got, ok := WindowDigest(spans[i+1].UncompressedStart, data)
		switch {
		case ok && got != spans[i+1].Window:
			c.condemn(ctx, i+1, fmt.Errorf("span %d of %s: %w", i+1, c.key, ErrWindowMismatch))
		case ok:
			c.mu.Lock()
			c.winOK[i+1] = true // its own load need not check it again
			c.mu.Unlock()
		}
	}
	return nil
}

// windowBefore returns the digest of span i's window from the cached bytes
// of span i-1, if they are there and suffice (at the start of the stream,
// from nothing).
func (c *core) windowBefore(i int) ([32]byte, bool) {
	start := c.table.Spans[i].UncompressedStart
	if start == 0 {
		return WindowDigest(0, nil)
	}
	prev := c.table.Spans[i-1]
	need := min(start, WindowSize)
	c.mu.Lock()
	maybe := c.state[i-1] != missing && c.bad[i-1] == nil
	c.mu.Unlock()
	if !maybe || need > prev.Len() {
		return [32]byte{}, false
	}
	tail := make([]byte, need)
	if n, _ := c.cache.GetAt(c.keys[i-1], tail, prev.Len()-need); int64(n) != need {
		return [32]byte{}, false
	}
	return WindowDigest(start, tail)
}

// condemn takes span i out of service for err (its window mismatched): it
// is removed from the cache and its reads fail from now on. The first
// condemnation of a span is logged and counted.
func (c *core) condemn(ctx context.Context, i int, err error) {
	c.mu.Lock()
	first := c.bad[i] == nil
	if first {
		if c.bad == nil {
			c.bad = map[int]error{}
		}
		c.bad[i] = err
		c.setState(i, missing)
	}
	c.mu.Unlock()
	if !first {
		return
	}
	if rerr := c.cache.Remove(c.keys[i]); rerr != nil {
		log.G(ctx).WithError(rerr).WithField("layer", c.key).WithField("span", i).Warn("cannot remove a span with a bad checkpoint window from the cache")
	}
	log.G(ctx).WithError(err).WithField("layer", c.key).WithField("span", i).
		Error("checkpoint window of the span does not match the bytes before it: the zTOC is bad; reads of the span fail with EIO")
	if c.observer != nil {
		c.observer.Failure(FailureWindowMismatch)
	}
}

// badSpan returns the error span i was condemned for, if it was.
func (c *core) badSpan(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bad[i]
}

// poison takes the layer out of service (see Manager.Poison).
func (c *core) poison(ctx context.Context, reason error) {
	err := fmt.Errorf("layer %s: %w: %w", c.key, ErrLayerBad, reason)
	c.mu.Lock()
	first := c.poisoned == nil
	if first {
		c.poisoned = err
		for i := range c.state {
			if c.table.Spans[i].Len() > 0 {
				c.setState(i, missing)
			}
		}
	}
	c.mu.Unlock()
	if !first {
		return
	}
	if rerr := c.cache.Remove(c.key); rerr != nil {
		log.G(ctx).WithError(rerr).WithField("layer", c.key).Warn("cannot remove the cached spans of a bad layer")
	}
	log.G(ctx).WithError(reason).WithField("layer", c.key).
		Error("layer found to contradict its zTOC; its reads fail with EIO from now on and its cached spans are removed")
}
