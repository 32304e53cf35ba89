package span

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// CheckRead judges the result n, err of a Fetcher's FetchAt of want bytes
// at off: nil when all of them came (io.EOF with all bytes is success), an
// error wrapping io.ErrUnexpectedEOF for fewer bytes without an error, and
// err otherwise.
func CheckRead(n, want int, off int64, err error) error {
	switch {
	case n == want && (err == nil || errors.Is(err, io.EOF)):
		return nil
	case err == nil || errors.Is(err, io.EOF):
		return fmt.Errorf("short read of %d/%d bytes at %d: %w", n, want, off, io.ErrUnexpectedEOF)
	default:
		return err
	}
}

// ReadFull fills p from f at off (see CheckRead for a short read).
func ReadFull(ctx context.Context, f Fetcher, p []byte, off int64) error {
	n, err := f.FetchAt(ctx, p, off)
	return CheckRead(n, len(p), off, err)
}

// readFullOrAbandon is ReadFull that returns when ctx ends even if f does
// not: the fetch is then abandoned (p is never used again by the caller),
// so that a fetcher that ignores ctx cannot hang readers.
func readFullOrAbandon(ctx context.Context, f Fetcher, p []byte, off int64) error {
	done := make(chan error, 1)
	go func() { done <- ReadFull(ctx, f, p, off) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
