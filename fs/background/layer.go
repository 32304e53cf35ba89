package background

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

// Spans is a layer's spans as the walk reaches them (span.Loader): it
// verifies, inflates and caches spans from compressed bytes the walk
// fetched, and tells what is local. Every method is required: the walk
// relies on each of them.
type Spans interface {
	// Has reports whether span i is already local (or on its way).
	Has(ctx context.Context, i int) bool
	// Reserve reserves spans first.. up to last before the walk fetches
	// them, stopping at one already local or on its way, so that a read
	// of one of them meanwhile waits for the chunk instead of fetching
	// the same bytes again; it returns the last one reserved (first-1:
	// none).
	Reserve(ctx context.Context, first, last int) int
	// Release gives up the reservations Load did not complete.
	Release(first, last int)
	// Waited reports whether a read waits for one of the reserved spans
	// first..last: a preemption spares their chunk.
	Waited(first, last int) bool
	// Load verifies, inflates and caches spans first..last from
	// compressed, which holds blob[base:base+len(compressed)].
	Load(ctx context.Context, first, last int, compressed []byte, base int64) error
	// LoadPlain completes reserved span i with its uncompressed bytes
	// from the layer's stream (its compressed bytes verified by the
	// caller): caches them and hands them to waiting readers.
	LoadPlain(ctx context.Context, i int, plain []byte) error
	// Compressed returns the verified compressed bytes a read kept of a
	// local span i, if any, waiting for a read's fetch of it in flight;
	// DropCompressed forgets them all.
	Compressed(ctx context.Context, i int) ([]byte, bool)
	DropCompressed(ctx context.Context)
	// Complete reports whether every span of the layer is cached.
	Complete(ctx context.Context) bool
	// ReadCached reads cached bytes of span i from rel into p without
	// fetching; false when the cache does not hold all of them.
	ReadCached(ctx context.Context, i int, p []byte, rel int64) bool
}

var _ Spans = (*span.Loader)(nil)

// Layer is one mounted layer to make local.
type Layer struct {
	// Key identifies the mount (its mountpoint); Cancel takes it.
	Key string
	// Digest is the layer blob's digest, checked once all of it was read.
	Digest digest.Digest
	// Table is the layer's span layout.
	Table span.Table
	// Blob reads the compressed blob.
	Blob span.Fetcher
	// Spans receives the fetched bytes.
	Spans Spans
	// ZTOC is the digest of the zTOC the layer is served from. With the
	// layer digest it keys the verified and bad markers (see Markers).
	ZTOC digest.Digest
	// Files, if set, is the zTOC's file table: once the blob hashed to
	// its digest, the walk has compared it with the real tar headers and
	// the cached spans with the real uncompressed bytes (a difference is
	// ErrZTOCMismatch, and the layer is marked bad).
	Files *layer.TOC
	// Gzip: the blob is gzip-compressed, as the zTOC says (otherwise an
	// uncompressed tar stream).
	Gzip bool
}

func (l Layer) check() error {
	switch {
	case l.Key == "":
		return errors.New("background layer without a key")
	case l.Blob == nil || l.Spans == nil:
		return fmt.Errorf("background layer %s without a blob or spans", l.Digest)
	case len(l.Table.Spans) == 0:
		return fmt.Errorf("background layer %s without spans", l.Digest)
	}
	if l.ZTOC != "" {
		if err := l.ZTOC.Validate(); err != nil {
			return fmt.Errorf("background layer %s: zTOC digest: %w", l.Digest, err)
		}
	}
	return l.Digest.Validate()
}

// walkResult is what a walk of a layer found besides a fatal error.
type walkResult struct {
	fetched int64  // compressed bytes fetched
	checked bool   // the whole blob hashed to the layer digest
	skipped string // why the whole-blob check could not run
	// loadFailed counts the chunks with spans that did not load;
	// loadErr is the first such error.
	loadFailed int
	loadErr    error
	// stream is what the cross-check with the file table found (wrapping
	// ErrZTOCMismatch); sums are the hashes of the spans' real bytes when
	// it passed.
	stream error
	sums   [][32]byte
	// loaded reports the spans the stream check loaded itself (no
	// comparison needed); set with sums.
	loaded func(int) bool
}

// complete walks j's blob in order, chunk by chunk, yielding to demand reads
// before each chunk, and loads the spans that are not local yet. The error
// is one that ends the walk (fetch, cancel, digest mismatch); the result
// says what else it found.
//
// While it has fetched every byte so far it also hashes the blob, and checks
// the layer digest at the end; with a file table it decompresses the same
// bytes in step and cross-checks them (see Layer.Files). Spans that demand
// reads already brought in are not fetched again (the link is the scarce
// resource): they are hashed from the compressed copy the read kept, and
// without one the whole-blob check is skipped (walkResult.skipped).
func (s *Scheduler) complete(ctx context.Context, j *job) (walkResult, error) {
	l := j.layer
	t := l.Table
	h := l.Digest.Algorithm().Hash()
	eager := s.eager(l)
	defer s.releaseEager(l.Key)
	var res walkResult
	var hashed int64 // the blob is hashed up to there
	whole := true    // every byte so far went through h
	var stream *streamCheck
	var holds []*chunkHold // chunks fed to the stream check
	defer func() {
		for _, c := range holds { // after abandon: the check is gone
			c.streamDone()
		}
	}()
	// pends are the chunks whose spans the stream check is to load and
	// has not all taken yet, with their bytes (the walk's share of the
	// chunk's memory is held until then).
	var pends []pendingChunk
	defer func() {
		for _, p := range pends {
			p.hold.walkDone()
		}
	}()
	if l.Files != nil {
		stream = startStreamCheck(ctx, l)
		defer stream.abandon() // which releases the spans it did not load
	}
	rewind := -1 // a span to walk again from: the stream check stopped before loading it
	// prune forgets the pending chunks the check has taken every span of.
	prune := func() {
		kept := pends[:0]
		for _, p := range pends {
			if stream.plan.pending(p.first, p.last) {
				kept = append(kept, p)
			} else {
				p.hold.walkDone()
			}
		}
		pends = kept
	}
	// settle loads the spans still pending in the check from their
	// checkpoints, before the walk waits: the inflater holds the end of a
	// deflate block back until it decodes more, so the last spans fed
	// wait for the next chunk, and a read waiting for one of them would
	// otherwise wait for a walk that waits for that read.
	settle := func() {
		for _, p := range pends {
			for _, m := range stream.plan.takeBack(p.first, p.last) {
				err := l.Spans.Load(ctx, m, m, p.buf, p.lo)
				l.Spans.Release(m, m)
				if err != nil && ctx.Err() == nil && !errors.Is(err, span.ErrClosed) {
					res.loadFailed++
					if res.loadErr == nil {
						res.loadErr = err
					}
				}
			}
			p.hold.walkDone()
		}
		pends = pends[:0]
	}
	// sink hashes b and feeds it to the stream check, which calls done
	// (nil: none) once it no longer needs b.
	sink := func(b []byte, done func()) {
		h.Write(b)
		if stream != nil {
			stream.feed(ctx, b, done)
		} else if done != nil {
			done()
		}
	}
	skip := func(reason string) {
		if whole {
			whole, res.skipped = false, reason
			if stream != nil {
				if left := stream.abandon(); len(left) > 0 {
					rewind = left[0]
				}
			}
		}
	}
	for i, attempt := 0, 1; i < len(t.Spans); {
		if l.Spans.Has(ctx, i) {
			if whole {
				n, err := s.hashLocal(ctx, j, i, sink, &hashed, skip, settle)
				res.fetched += n
				if err != nil {
					return res, err
				}
			}
			if i++; rewind >= 0 {
				i, rewind = rewind, -1
			}
			continue
		}
		k := t.Run(i, len(t.Spans)-1, s.opts.ChunkSize, span.UncompressedBytes)
		for m := i + 1; m <= k; m++ {
			if l.Spans.Has(ctx, m) {
				k = m - 1
				break
			}
		}
		eager = s.eager(l) // the link's rate may have been measured since
		round, err := s.waitIdle(ctx, eager, settle)
		if err != nil {
			return res, err
		}
		chunk := func(k int) (lo, hi int64) {
			lo, hi = t.Spans[i].CompressedStart, t.Spans[k].CompressedEnd
			if whole {
				lo = min(hashed, lo) // include the gzip header before span 0
			}
			if k == len(t.Spans)-1 {
				hi = t.CompressedSize // the gzip trailer
			}
			return lo, hi
		}
		// Wait for room in the node's budget before reserving: reads of
		// reserved spans wait for the chunk.
		lo, hi := chunk(k)
		hold, err := s.mem.hold(ctx, hi-lo, settle)
		if err != nil {
			return res, err
		}
		if round.Err() != nil { // preempted while waiting for room: yield first
			hold.walkDone()
			hold.streamDone()
			continue
		}
		// Reserve the chunk's spans only now, after yielding to demand
		// reads: those reads may have brought some of them in.
		if k = l.Spans.Reserve(ctx, i, k); k < i {
			hold.walkDone()
			hold.streamDone()
			if !l.Spans.Has(ctx, i) { // neither local nor on its way: closed
				return res, fmt.Errorf("reserve span %d of %s: %w", i, l.Digest, span.ErrClosed)
			}
			continue // a read fetched span i meanwhile
		}
		lo, hi = chunk(k)
		buf := make([]byte, hi-lo)
		cctx, preempted, stop := s.chunkContext(ctx, round, func() bool { return l.Spans.Waited(i, k) })
		err = s.fetch(cctx, l.Blob, buf, lo)
		stop()
		if err != nil {
			hold.walkDone()
			hold.streamDone()
			l.Spans.Release(i, k) // readers of these spans fetch them themselves
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			if preempted() {
				j.log.WithField("spans", fmt.Sprintf("%d-%d", i, k)).Debug("background chunk preempted by reads or a mount; fetched again later")
				continue
			}
			s.observe(func(o Observer) { o.Failure(metrics.FailureFetch) })
			if attempt >= s.opts.MaxAttempts {
				return res, fmt.Errorf("fetch spans %d-%d of %s, %d attempts: %w", i, k, l.Digest, attempt, err)
			}
			j.log.WithError(err).WithField("attempt", attempt).Debug("background chunk failed; retrying")
			attempt++
			if err := sleep(ctx, s.opts.RetryWait); err != nil {
				return res, err
			}
			continue
		}
		res.fetched += int64(len(buf))
		s.observe(func(o Observer) { o.BackgroundBytes(int64(len(buf))) })
		// Inflate once: spans whose bytes go to the stream check are
		// loaded by it from the stream (after their digests are checked
		// here), not inflated again from their checkpoints.
		plain := stream != nil && whole && hashed < hi && plainChunk(t, i, k, buf, lo) && stream.plan.reserve(i, k)
		if whole && hashed < hi {
			holds = append(holds, hold)
			sink(buf[hashed-lo:], hold.streamDone)
			hashed = hi
		} else {
			hold.streamDone()
		}
		if plain {
			prune()
			pends = append(pends, pendingChunk{first: i, last: k, buf: buf, lo: lo, hold: hold})
			i, attempt = k+1, 1
			continue
		}
		err = l.Spans.Load(ctx, i, k, buf, lo)
		hold.walkDone()
		l.Spans.Release(i, k) // Load completed them unless it failed early
		if err != nil {
			if errors.Is(err, span.ErrClosed) || ctx.Err() != nil {
				return res, errors.Join(ctx.Err(), err)
			}
			// The span manager logged a span that failed verification;
			// the result reports it (and the digest check, if the bytes
			// were wrong).
			j.log.WithError(err).WithField("spans", fmt.Sprintf("%d-%d", i, k)).Debug("background chunk not loaded")
			res.loadFailed++
			if res.loadErr == nil {
				res.loadErr = err
			}
		}
		i, attempt = k+1, 1
	}
	if whole && hashed < t.CompressedSize { // the trailer after a local last span
		n, err := s.hashGap(ctx, l.Blob, sink, hashed, t.CompressedSize, eager, settle)
		res.fetched += n
		if err != nil {
			return res, err
		}
		hashed = t.CompressedSize
	}
	l.Spans.DropCompressed(ctx)
	if !whole {
		return res, nil
	}
	if got := digest.NewDigest(l.Digest.Algorithm(), h); got != l.Digest || hashed != t.CompressedSize {
		return res, fmt.Errorf("layer %s: blob of %d bytes hashes to %s: %w", l.Digest, hashed, got, ErrDigestMismatch)
	}
	res.checked = true
	if stream != nil {
		if err := stream.end(); err != nil {
			res.stream = fmt.Errorf("layer %s, zTOC %s: %w: %w", l.Digest, l.ZTOC, ErrZTOCMismatch, err)
		} else {
			res.sums, res.loaded = stream.sums, stream.plan.isLoaded
		}
	}
	return res, nil
}

// eager reports whether l is walked without yielding to reads now (see
// Options.EagerBytes and EagerTime), claiming its share of EagerBytes
// when there is room: the layers walked eagerly on the node together are
// at most EagerBytes. A layer the link's rate does not let walk eagerly
// now holds no claim (it gives back one it held), so that it does not
// keep a smaller layer from walking eagerly. The walk gives the claim back
// when it ends (releaseEager).
func (s *Scheduler) eager(l Layer) bool {
	size := l.Table.CompressedSize
	if s.opts.EagerBytes <= 0 || size > s.opts.EagerBytes {
		return false
	}
	if !s.fastEnough(size) || s.fastLink() {
		s.releaseEager(l.Key)
		return false
	}
	s.eagerMu.Lock()
	defer s.eagerMu.Unlock()
	if _, held := s.eagerKeys[l.Key]; held {
		return true
	}
	if s.eagerHeld+size > s.opts.EagerBytes {
		return false
	}
	s.eagerKeys[l.Key] = size
	s.eagerHeld += size
	return true
}

// releaseEager gives back the claim of the walk of key, if any.
func (s *Scheduler) releaseEager(key string) {
	s.eagerMu.Lock()
	if size, ok := s.eagerKeys[key]; ok {
		s.eagerHeld -= size
		delete(s.eagerKeys, key)
	}
	s.eagerMu.Unlock()
}

// walksEagerly reports whether the layer queued under key is being walked
// eagerly (see Options.EagerBytes): the walk has begun and holds its claim,
// and the link is fast enough for it.
func (s *Scheduler) walksEagerly(key string) bool {
	s.eagerMu.Lock()
	size, ok := s.eagerKeys[key]
	s.eagerMu.Unlock()
	return ok && s.fastEnough(size) && !s.fastLink()
}

// fastEnough reports whether size compressed bytes cross the link within
// Options.EagerTime at the rate Options.LinkRate reports (none: assumed
// so).
func (s *Scheduler) fastEnough(size int64) bool {
	if s.opts.EagerTime <= 0 || s.opts.LinkRate == nil {
		return true
	}
	rate, ok := s.opts.LinkRate()
	return !ok || rate <= 0 || float64(size)/rate <= s.opts.EagerTime.Seconds()
}

// fastLink reports what Options.FastLink does (false without it).
func (s *Scheduler) fastLink() bool { return s.opts.FastLink != nil && s.opts.FastLink() }

// pendingChunk is a chunk whose spans the stream check is to load.
type pendingChunk struct {
	first, last int
	buf         []byte // blob[lo:lo+len(buf)], covering the spans
	lo          int64
	hold        *chunkHold
}

// plainChunk reports whether spans first..last, which buf (blob[base:])
// holds, can be loaded from the layer stream: each small enough to be
// collected and its compressed bytes matching its digest. Otherwise
// Spans.Load handles the chunk (and reports a span that does not verify).
func plainChunk(t span.Table, first, last int, buf []byte, base int64) bool {
	for _, sp := range t.Spans[first : last+1] {
		if sp.Len() > maxPlainSpan {
			return false
		}
		if sp.Digest.Algorithm().FromBytes(buf[sp.CompressedStart-base:sp.CompressedEnd-base]) != sp.Digest {
			return false
		}
	}
	return true
}

// hashLocal feeds span i, which a read already made local, into the blob
// hash from the compressed copy the read kept, fetching only a gap before
// it (the gzip header before span 0). Without a kept copy (a read before a
// restart, say) the span's compressed bytes are fetched again for the hash:
// a layer is only reported local once all of it was checked.
func (s *Scheduler) hashLocal(ctx context.Context, j *job, i int, sink func([]byte, func()), hashed *int64, skip func(string), settle func()) (int64, error) {
	sp := j.layer.Table.Spans[i]
	c, ok := j.layer.Spans.Compressed(ctx, i)
	switch {
	case !ok && *hashed <= sp.CompressedEnd:
		n, err := s.hashGap(ctx, j.layer.Blob, sink, *hashed, sp.CompressedEnd, s.eager(j.layer), settle)
		if err != nil {
			return n, err
		}
		*hashed = sp.CompressedEnd
		return n, nil
	case !ok:
		skip(fmt.Sprintf("span %d was made local by a read that kept no compressed copy", i))
		return 0, nil
	case *hashed > sp.CompressedEnd:
		skip(fmt.Sprintf("span %d ends before byte %d, which was already hashed", i, *hashed))
		return 0, nil
	}
	var n int64
	if *hashed < sp.CompressedStart {
		var err error
		if n, err = s.hashGap(ctx, j.layer.Blob, sink, *hashed, sp.CompressedStart, s.eager(j.layer), settle); err != nil {
			return n, err
		}
		*hashed = sp.CompressedStart
	}
	sink(c[*hashed-sp.CompressedStart:], nil)
	*hashed = sp.CompressedEnd
	return n, nil
}

// hashGap fetches blob[from:to) and feeds it into h; settle is called
// before it waits for the link (eager: see Options.EagerBytes).
func (s *Scheduler) hashGap(ctx context.Context, blob span.Fetcher, sink func([]byte, func()), from, to int64, eager bool, settle func()) (int64, error) {
	if _, err := s.waitIdle(ctx, eager, settle); err != nil {
		return 0, err
	}
	buf := make([]byte, to-from)
	if err := s.fetch(ctx, blob, buf, from); err != nil {
		return 0, fmt.Errorf("fetch bytes %d-%d: %w", from, to, err)
	}
	s.observe(func(o Observer) { o.BackgroundBytes(int64(len(buf))) })
	sink(buf, nil)
	return int64(len(buf)), nil
}

// fetch fills buf from blob at off within FetchTimeout.
func (s *Scheduler) fetch(ctx context.Context, blob span.Fetcher, buf []byte, off int64) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.FetchTimeout)
	defer cancel()
	start := time.Now()
	err := span.ReadFull(ctx, blob, buf, off)
	log.G(ctx).WithError(err).WithField("offset", off).WithField("bytes", len(buf)).WithField("took", time.Since(start)).
		Debug("background chunk fetched") // the timeline of the link, beside "range read" and "spans fetched"
	return err
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
