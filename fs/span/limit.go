package span

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"golang.org/x/sync/semaphore"
)

// ErrTooLarge is wrapped by errors for spans whose uncompressed length
// alone exceeds the node's decompression bound: they are never fetched nor
// decompressed. It also wraps errdefs.ErrResourceExhausted.
var ErrTooLarge = fmt.Errorf("span exceeds the decompression bound: %w", errdefs.ErrResourceExhausted)

// DecompressLimit bounds the uncompressed bytes being decompressed at once
// by every Manager that shares it (one per daemon): a decompression takes
// the span's uncompressed length from it until the span is stored. A nil
// *DecompressLimit bounds nothing. It is safe for concurrent use.
type DecompressLimit struct {
	max int64
	sem *semaphore.Weighted
}

// NewDecompressLimit returns a limit of max bytes, or nil (no bound) when
// max <= 0.
func NewDecompressLimit(max int64) *DecompressLimit {
	if max <= 0 {
		return nil
	}
	return &DecompressLimit{max: max, sem: semaphore.NewWeighted(max)}
}

// Max returns the bound (0: none).
func (l *DecompressLimit) Max() int64 {
	if l == nil {
		return 0
	}
	return l.max
}

// check refuses n bytes that could never be acquired.
func (l *DecompressLimit) check(n int64) error {
	if l != nil && n > l.max {
		return fmt.Errorf("%d uncompressed bytes, bound %d (limits.max_decompress_bytes): %w", n, l.max, ErrTooLarge)
	}
	return nil
}

// acquire waits until n bytes are free or ctx ends; release gives them
// back. n larger than the bound is refused at once with ErrTooLarge.
func (l *DecompressLimit) acquire(ctx context.Context, n int64) (release func(), err error) {
	if l == nil || n <= 0 {
		return func() {}, nil
	}
	if err := l.check(n); err != nil {
		return nil, err
	}
	if err := l.sem.Acquire(ctx, n); err != nil {
		return nil, fmt.Errorf("wait for %d bytes of the decompression bound: %w", n, err)
	}
	return func() { l.sem.Release(n) }, nil
}

// isTooLarge reports whether err refuses a span for its size.
func isTooLarge(err error) bool { return errors.Is(err, ErrTooLarge) }
