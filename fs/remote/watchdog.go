package remote

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// watchdog cancels a request that makes no progress for a while: while it
// runs, the response must arrive, or the next body read must return, within
// d. It is paused between reads so that a slow consumer does not count.
type watchdog struct {
	d      time.Duration
	timer  stopTimer
	fired  atomic.Bool
	cancel context.CancelFunc
}

// stopTimer is what a watchdog needs of a *time.Timer made by time.AfterFunc.
type stopTimer interface {
	Stop() bool
	Reset(d time.Duration) bool
}

// realAfterFunc is time.AfterFunc, the default Client.afterFunc.
func realAfterFunc(d time.Duration, f func()) stopTimer { return time.AfterFunc(d, f) }

// startWatchdog returns a context canceled when the running watchdog fires;
// afterFunc makes its timer (realAfterFunc but in tests).
func startWatchdog(ctx context.Context, d time.Duration, afterFunc func(time.Duration, func()) stopTimer) (context.Context, *watchdog) {
	ctx, cancel := context.WithCancel(ctx)
	w := &watchdog{d: d, cancel: cancel}
	w.timer = afterFunc(d, func() {
		w.fired.Store(true)
		cancel()
	})
	return ctx, w
}

func (w *watchdog) pause()  { w.timer.Stop() }
func (w *watchdog) resume() { w.timer.Reset(w.d) }

// stop releases the watchdog and cancels its context.
func (w *watchdog) stop() {
	w.timer.Stop()
	w.cancel()
}

// explain turns the cancellation the watchdog caused into a timeout error.
func (w *watchdog) explain(err error) error {
	if err == nil || !w.fired.Load() {
		return err
	}
	return fmt.Errorf("no progress from registry within %s (%v): %w", w.d, err, context.DeadlineExceeded)
}

// watchedReader runs the watchdog only while a Read is in progress.
type watchedReader struct {
	r io.Reader
	w *watchdog
}

func (r watchedReader) Read(p []byte) (int, error) {
	r.w.resume()
	n, err := r.r.Read(p)
	r.w.pause()
	if err != nil && err != io.EOF {
		err = r.w.explain(err)
	}
	return n, err
}
