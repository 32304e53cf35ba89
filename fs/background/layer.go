package background

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// Spans is the part of a span manager a worker uses: it verifies, inflates
// and caches spans from compressed bytes the worker fetched.
type Spans interface {
	Load(ctx context.Context, first, last int, compressed []byte, base int64) error
}

var _ Spans = (*span.Manager)(nil)

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
// before each chunk, loads the spans and hashes the blob. It returns the
// compressed bytes fetched.
func (s *Scheduler) complete(ctx context.Context, j *job) (int64, error) {
	l := j.layer
	t := l.Table
	h := l.Digest.Algorithm().Hash()
	var hashed, fetched int64 // hashed: the blob is hashed up to there
	for i, attempt := 0, 1; i < len(t.Spans); {
		k := chunk(t, i, s.opts.ChunkSize)
		lo, hi := min(hashed, t.Spans[i].CompressedStart), t.Spans[k].CompressedEnd
		if k == len(t.Spans)-1 {
			hi = t.CompressedSize // the gzip trailer
		}
		if err := s.waitIdle(ctx); err != nil {
			return fetched, err
		}
		buf := make([]byte, hi-lo)
		err := s.fetch(ctx, l.Blob, buf, lo)
		if err != nil {
			if ctx.Err() != nil {
				return fetched, ctx.Err()
			}
			s.observe(func(o Observer) { o.Failure("fetch") })
			if attempt >= s.opts.MaxAttempts {
				return fetched, fmt.Errorf("fetch spans %d-%d of %s, %d attempts: %w", i, k, l.Digest, attempt, err)
			}
			j.log.WithError(err).WithField("attempt", attempt).Debug("background chunk failed; retrying")
			attempt++
			if err := sleep(ctx, s.opts.RetryWait); err != nil {
				return fetched, err
			}
			continue
		}
		fetched += int64(len(buf))
		s.observe(func(o Observer) { o.BackgroundBytes(int64(len(buf))) })
		if hashed < hi {
			h.Write(buf[hashed-lo:])
			hashed = hi
		}
		if err := l.Spans.Load(ctx, i, k, buf, lo); err != nil {
			if errors.Is(err, span.ErrClosed) || ctx.Err() != nil {
				return fetched, errors.Join(ctx.Err(), err)
			}
			// A span that fails verification is logged by the span manager
			// and stays unreadable; the layer digest check reports it too.
			j.log.WithError(err).Debug("background chunk not loaded")
		}
		i, attempt = k+1, 1
	}
	if got := digest.NewDigest(l.Digest.Algorithm(), h); got != l.Digest || hashed != t.CompressedSize {
		return fetched, fmt.Errorf("layer %s: blob of %d bytes hashes to %s: %w", l.Digest, hashed, got, ErrDigestMismatch)
	}
	return fetched, nil
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
