package background

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// Spans is the part of a span manager a worker uses: it verifies, inflates
// and caches spans from compressed bytes the worker fetched.
type Spans interface {
	Load(ctx context.Context, first, last int, compressed []byte, base int64) error
	// Has reports whether span i is already local (or on its way).
	Has(ctx context.Context, i int) bool
	// Compressed returns the verified compressed bytes a read kept of a
	// local span i, if any; DropCompressed forgets them all.
	Compressed(ctx context.Context, i int) ([]byte, bool)
	DropCompressed(ctx context.Context)
}

var _ Spans = (*span.Manager)(nil)

// reserver is implemented by Spans that let the walk reserve the spans of a
// chunk before fetching it, so that a read of one of them meanwhile waits
// for the chunk instead of fetching the same bytes again (span.Manager).
type reserver interface {
	// Reserve reserves spans first.. up to last, stopping at one already
	// local or on its way, and returns the last one reserved (first-1:
	// none).
	Reserve(ctx context.Context, first, last int) int
	// Release gives up the reservations Load did not complete.
	Release(first, last int)
}

var _ reserver = (*span.Manager)(nil)

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
	return l.Digest.Validate()
}

// chunk returns the last span k >= i such that spans i..k hold at most size
// uncompressed bytes (at least span i).
func chunk(t span.Table, i int, size int64) int {
	k := i
	for k+1 < len(t.Spans) && t.Spans[k+1].UncompressedEnd-t.Spans[i].UncompressedStart <= size {
		k++
	}
	return k
}

// complete walks j's blob in order, chunk by chunk, yielding to demand reads
// before each chunk, and loads the spans that are not local yet. It returns
// the compressed bytes fetched and whether it checked the layer digest.
//
// While it has fetched every byte so far it also hashes the blob, and checks
// the layer digest at the end. Spans that demand reads already brought in
// are not fetched again (the link is the scarce resource): each of them was
// verified against its zTOC digest, but the whole-blob check is then skipped.
func (s *Scheduler) complete(ctx context.Context, j *job) (int64, bool, error) {
	l := j.layer
	t := l.Table
	h := l.Digest.Algorithm().Hash()
	var hashed, fetched int64 // hashed: the blob is hashed up to there
	whole := true             // every byte so far went through h
	for i, attempt := 0, 1; i < len(t.Spans); {
		if l.Spans.Has(ctx, i) {
			n, err := s.hashLocal(ctx, j, i, h, &hashed, &whole)
			fetched += n
			if err != nil {
				return fetched, false, err
			}
			i++
			continue
		}
		k := chunk(t, i, s.opts.ChunkSize)
		for m := i + 1; m <= k; m++ {
			if l.Spans.Has(ctx, m) {
				k = m - 1
				break
			}
		}
		if err := s.waitIdle(ctx); err != nil {
			return fetched, false, err
		}
		// Reserve the chunk's spans only now, after yielding to demand
		// reads: those reads may have brought some of them in.
		rs, reserve := l.Spans.(reserver)
		if reserve {
			if k = rs.Reserve(ctx, i, k); k < i {
				if !l.Spans.Has(ctx, i) { // neither local nor on its way: closed
					return fetched, false, fmt.Errorf("reserve span %d of %s: %w", i, l.Digest, span.ErrClosed)
				}
				continue // a read fetched span i meanwhile
			}
		}
		release := func() {
			if reserve {
				rs.Release(i, k)
			}
		}
		lo, hi := t.Spans[i].CompressedStart, t.Spans[k].CompressedEnd
		if whole {
			lo = min(hashed, lo) // include the gzip header before span 0
		}
		if k == len(t.Spans)-1 {
			hi = t.CompressedSize // the gzip trailer
		}
		buf := make([]byte, hi-lo)
		err := s.fetch(ctx, l.Blob, buf, lo)
		if err != nil {
			release() // readers of these spans fetch them themselves
			if ctx.Err() != nil {
				return fetched, false, ctx.Err()
			}
			s.observe(func(o Observer) { o.Failure("fetch") })
			if attempt >= s.opts.MaxAttempts {
				return fetched, false, fmt.Errorf("fetch spans %d-%d of %s, %d attempts: %w", i, k, l.Digest, attempt, err)
			}
			j.log.WithError(err).WithField("attempt", attempt).Debug("background chunk failed; retrying")
			attempt++
			if err := sleep(ctx, s.opts.RetryWait); err != nil {
				return fetched, false, err
			}
			continue
		}
		fetched += int64(len(buf))
		s.observe(func(o Observer) { o.BackgroundBytes(int64(len(buf))) })
		if whole && hashed < hi {
			h.Write(buf[hashed-lo:])
			hashed = hi
		}
		err = l.Spans.Load(ctx, i, k, buf, lo)
		release() // Load completed them unless it failed early
		if err != nil {
			if errors.Is(err, span.ErrClosed) || ctx.Err() != nil {
				return fetched, false, errors.Join(ctx.Err(), err)
			}
			// A span that fails verification is logged by the span manager
			// and stays unreadable; the layer digest check reports it too.
			j.log.WithError(err).Debug("background chunk not loaded")
		}
		i, attempt = k+1, 1
	}
	if whole && hashed < t.CompressedSize { // the trailer after a local last span
		n, err := s.hashGap(ctx, l.Blob, h, hashed, t.CompressedSize)
		fetched += n
		if err != nil {
			return fetched, false, err
		}
		hashed = t.CompressedSize
	}
	l.Spans.DropCompressed(ctx)
	if !whole {
		return fetched, false, nil
	}
	if got := digest.NewDigest(l.Digest.Algorithm(), h); got != l.Digest || hashed != t.CompressedSize {
		return fetched, false, fmt.Errorf("layer %s: blob of %d bytes hashes to %s: %w", l.Digest, hashed, got, ErrDigestMismatch)
	}
	return fetched, true, nil
}

// hashLocal feeds span i, which a read already made local, into the blob
// hash from the compressed copy the read kept, fetching only a gap before
// it (the gzip header before span 0). Without a kept copy the whole-blob
// check is given up: the span is not fetched again.
func (s *Scheduler) hashLocal(ctx context.Context, j *job, i int, h hash.Hash, hashed *int64, whole *bool) (int64, error) {
	if !*whole {
		return 0, nil
	}
	sp := j.layer.Table.Spans[i]
	c, ok := j.layer.Spans.Compressed(ctx, i)
	if !ok || *hashed > sp.CompressedEnd {
		*whole = false
		return 0, nil
	}
	var n int64
	if *hashed < sp.CompressedStart {
		var err error
		if n, err = s.hashGap(ctx, j.layer.Blob, h, *hashed, sp.CompressedStart); err != nil {
			return n, err
		}
		*hashed = sp.CompressedStart
	}
	h.Write(c[*hashed-sp.CompressedStart:])
	*hashed = sp.CompressedEnd
	return n, nil
}

// hashGap fetches blob[from:to) and feeds it into h.
func (s *Scheduler) hashGap(ctx context.Context, blob span.Fetcher, h hash.Hash, from, to int64) (int64, error) {
	if err := s.waitIdle(ctx); err != nil {
		return 0, err
	}
	buf := make([]byte, to-from)
	if err := s.fetch(ctx, blob, buf, from); err != nil {
		return 0, fmt.Errorf("fetch bytes %d-%d: %w", from, to, err)
	}
	s.observe(func(o Observer) { o.BackgroundBytes(int64(len(buf))) })
	h.Write(buf)
	return int64(len(buf)), nil
}

// fetch fills buf from blob at off within FetchTimeout.
func (s *Scheduler) fetch(ctx context.Context, blob span.Fetcher, buf []byte, off int64) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.FetchTimeout)
	defer cancel()
	n, err := blob.FetchAt(ctx, buf, off)
	switch {
	case n == len(buf) && (err == nil || errors.Is(err, io.EOF)):
		return nil
	case err == nil || errors.Is(err, io.EOF):
		return fmt.Errorf("short read of %d/%d bytes at %d: %w", n, len(buf), off, io.ErrUnexpectedEOF)
	default:
		return err
	}
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
