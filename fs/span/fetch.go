package span

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containerd/log"
)

// fetchAs is fetch, logged at Debug with what it was for (a read waiting,
// or ahead of reads) and how long it took: the timeline of a layer's
// fetches.
func (c *core) fetchAs(first, last int, split int64, ahead bool) {
	start := time.Now()
	c.fetch(first, last, split)
	if !log.L.Logger.IsLevelEnabled(log.DebugLevel) {
		return // the entry below would be built for nothing
	}
	purpose := "demand"
	if ahead {
		purpose = "ahead"
	}
	log.L.WithField("layer", c.key).WithField("spans", fmt.Sprintf("%d-%d", first, last)).
		WithField("offset", c.table.Spans[first].CompressedStart).
		WithField("bytes", c.table.Spans[last].CompressedEnd-c.table.Spans[first].CompressedStart).
		WithField("purpose", purpose).WithField("took", time.Since(start)).Debug("spans fetched")
}

// fetch is the shared fetch of spans [first, last] in one range request
// (split into parallel ones above split bytes when split > 0, see
// Options.SplitRequest). It runs under the core's lifecycle plus
// FetchTimeout, never under a reader's context, and completes every span's
// call. Its caller counts it in c.wg.
func (c *core) fetch(first, last int, split int64) {
	ctx, cancel := context.WithTimeout(c.life, c.timeout)
	defer cancel()
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("layer", c.key))

	spans := c.table.Spans
	base := spans[first].CompressedStart
	buf := make([]byte, spans[last].CompressedEnd-base)
	err := c.fetchParts(ctx, buf, base, split)
	if err != nil {
		err = fmt.Errorf("fetch spans %d-%d of %s: %w", first, last, c.key, err)
	}
	for i := first; i <= last; i++ {
		if err == nil && ctx.Err() != nil { // close or the timeout stops the remaining work
			err = fmt.Errorf("fetch span %d of %s: %w", i, c.key, ctx.Err())
		}
		if err != nil {
			c.finish(i, nil, err, false)
			continue
		}
		s := spans[i]
		compressed := buf[s.CompressedStart-base : s.CompressedEnd-base]
		data, stored, serr := c.load(ctx, i, compressed)
		for r := 0; r < c.retries && errors.Is(serr, ErrVerification) && ctx.Err() == nil; r++ {
			// Options.VerifyRetries: fetch the span alone again. A
			// failed fetch ends the retries (the client retried it).
			again := make([]byte, len(compressed))
			if err := readFullOrAbandon(ctx, c.fetcher, again, s.CompressedStart); err != nil {
				break
			}
			compressed = again
			data, stored, serr = c.load(ctx, i, compressed)
		}
		if serr != nil || !c.keepZ {
			c.finish(i, data, serr, stored)
			continue
		}
		// Readers first: the compressed copy for the background walk is
		// written after they have the span (Loader.Compressed waits).
		kept := c.keeping(i)
		c.finish(i, data, serr, stored)
		c.keepCompressed(ctx, i, compressed)
		c.keptDone(i, kept)
	}
}

// fetchParts fills buf from the fetcher at off, in parallel requests of
// about split bytes when split > 0 (see Options.SplitRequest).
func (c *core) fetchParts(ctx context.Context, buf []byte, off int64, split int64) error {
	n := int64(len(buf))
	parts := 1
	if split > 0 && n > split {
		parts = int(min(int64(c.maxSplit), (n+split-1)/split))
	}
	if parts == 1 {
		return readFullOrAbandon(ctx, c.fetcher, buf, off)
	}
	size := (n + int64(parts) - 1) / int64(parts)
	errs := make(chan error, parts)
	for lo := int64(0); lo < n; lo += size {
		hi := min(lo+size, n)
		go func() { errs <- readFullOrAbandon(ctx, c.fetcher, buf[lo:hi], off+lo) }()
	}
	var first error
	for lo := int64(0); lo < n; lo += size {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// load verifies the compressed bytes of span i against its digest,
// decompresses them, checks the checkpoint windows around the span (see
// checkWindows) and stores the result in the cache (stored reports whether
// that worked). Unverified bytes never reach the decompressor, and bytes
// from a mismatched window are neither served nor cached. The decompression
// holds the span's length of the decompression bound until the data is
// stored, waiting for it as long as ctx allows.
func (c *core) load(ctx context.Context, i int, compressed []byte) (data []byte, stored bool, err error) {
	s := c.table.Spans[i]
	if err := c.badSpan(i); err != nil {
		return nil, false, err
	}
	if got := s.Digest.Algorithm().FromBytes(compressed); got != s.Digest {
		err := fmt.Errorf("verify span %d of %s: %w", i, c.key, ErrVerification)
		log.G(ctx).WithField("layer", c.key).WithField("span", i).WithField("expected", s.Digest).WithField("actual", got).
			Error("span digests do not match; not serving it")
		return nil, false, err
	}
	release, err := c.limit.acquire(ctx, s.Len())
	if err != nil {
		if isTooLarge(err) {
			log.G(ctx).WithError(err).WithField("layer", c.key).WithField("span", i).
				Error("span too large to decompress; reads of it fail with EIO")
		}
		return nil, false, fmt.Errorf("decompress span %d of %s: %w", i, c.key, err)
	}
	defer release()
	data, err = c.dec.Decompress(compressed, i)
	if err != nil {
		return nil, false, fmt.Errorf("decompress span %d of %s: %w", i, c.key, err)
	}
	if int64(len(data)) != s.Len() {
		return nil, false, fmt.Errorf("decompress span %d of %s: got %d bytes, want %d: %w", i, c.key, len(data), s.Len(), io.ErrUnexpectedEOF)
	}
	if err := c.checkWindows(ctx, i, data); err != nil {
		return nil, false, err
	}
	return data, c.store(ctx, i, data), nil
}

// store puts span i into the cache and reports success. A failure (disk
// full, say) is logged; the data then serves only the waiting readers.
func (c *core) store(ctx context.Context, i int, data []byte) bool {
	if err := c.cache.Put(c.keys[i], data); err != nil {
		log.G(ctx).WithError(err).WithField("span", i).Warn("cannot cache span; serving it from memory to waiting readers only")
		return false
	}
	c.mu.Lock()
	gone := c.poisoned != nil || c.bad[i] != nil // taken out of service meanwhile
	c.mu.Unlock()
	if gone {
		_ = c.cache.Remove(c.keys[i])
		return false
	}
	return true
}
