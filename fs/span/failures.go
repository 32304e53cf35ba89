package span

import "time"

// DefaultFailHold is how long a failed fetch of a span answers new reads of
// that span with the same error instead of asking the registry again. The
// kernel retries a failed readahead at once with a read of its own; without
// the hold, a read(2) during a registry outage would wait for two fetch
// timeouts instead of one.
const DefaultFailHold = 500 * time.Millisecond

// failHold remembers the spans whose last fetch failed, for Options.FailHold.
// It is not safe for concurrent use: the core guards it with its mutex.
type failHold struct {
	hold   time.Duration // <= 0: nothing is held
	now    func() time.Time
	failed map[int]failure
}

// failure is the last failed fetch of a span.
type failure struct {
	at  time.Time
	err error
}

// recent returns the error of span i's fetch if it failed less than the
// hold ago.
func (h *failHold) recent(i int) error {
	f, ok := h.failed[i]
	if !ok {
		return nil
	}
	if h.hold <= 0 || h.now().Sub(f.at) >= h.hold {
		delete(h.failed, i)
		return nil
	}
	return f.err
}

// note records (err != nil) or clears the outcome of span i's fetch.
func (h *failHold) note(i int, err error) {
	if err == nil || h.hold <= 0 {
		delete(h.failed, i)
		return
	}
	if h.failed == nil {
		h.failed = map[int]failure{}
	}
	h.failed[i] = failure{at: h.now(), err: err}
}
