package span

import "time"

// DefaultFailHold is how long a failed fetch of a span answers new reads of
// that span with the same error instead of asking the registry again. The
// kernel retries a failed readahead at once with a read of its own; without
// the hold, a read(2) during a registry outage would wait for two fetch
// timeouts instead of one.
const DefaultFailHold = 500 * time.Millisecond

// failure is the last failed fetch of a span.
type failure struct {
	at  time.Time
	err error
}

// recentFailure returns the error of span i's fetch if it failed less than
// the hold ago. Callers hold mu.
func (m *Manager) recentFailure(i int) error {
	f, ok := m.failed[i]
	if !ok {
		return nil
	}
	if m.failHold <= 0 || m.now().Sub(f.at) >= m.failHold {
		delete(m.failed, i)
		return nil
	}
	return f.err
}

// noteFailure records (err != nil) or clears the outcome of span i's fetch.
// Callers hold mu.
func (m *Manager) noteFailure(i int, err error) {
	if err == nil || m.failHold <= 0 {
		delete(m.failed, i)
		return
	}
	if m.failed == nil {
		m.failed = map[int]failure{}
	}
	m.failed[i] = failure{at: m.now(), err: err}
}

// failedCall is a finished call that failed with err.
func failedCall(err error) *call {
	c := &call{done: make(chan struct{}), err: err}
	close(c.done)
	return c
}
