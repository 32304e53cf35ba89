// Package linkrate estimates how fast the link to the registries delivers
// bytes, from the transfers the registry client completes. The background
// walk asks it whether the link, rather than the node's CPU, is what makes
// a layer slow to complete (see background.Options.FastLink).
package linkrate

import (
	"slices"
	"sync"
	"time"
)

// MinSample is the smallest transfer that counts: below it a GET's time is
// mostly round trips, which say nothing of the link's rate.
const MinSample = 1 << 20

// Window is how many of the latest transfers the estimate is taken from.
const Window = 8

// Meter is a node's estimate of the link's rate: the fastest of the latest
// Window transfers of at least MinSample bytes, each its bytes over its
// time (a response body's, from headers to last byte). A single transfer
// errs low, never
// high: transfers that share the link at once each see a share of it, and
// a busy CPU slows the registry and the client too; the best of several
// is closer to what the link delivers, and on a link slower than a
// threshold no transfer beats it. The zero value has no estimate; it is
// safe for concurrent use.
type Meter struct {
	mu     sync.Mutex
	recent []float64 // bytes per second, oldest first, at most Window
}

// Observe counts a transfer of n bytes that took took. Transfers under
// MinSample, and those that took no measurable time, are ignored.
func (m *Meter) Observe(n int64, took time.Duration) {
	if n < MinSample || took <= 0 {
		return
	}
	r := float64(n) / took.Seconds()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.recent) == Window {
		m.recent = append(m.recent[:0], m.recent[1:]...)
	}
	m.recent = append(m.recent, r)
}

// ObserveGet makes a Meter a registry client's observer (remote.Observer):
// a whole GET's time includes round trips and the registry's time to
// answer, so it does not count; see ObserveBody.
func (m *Meter) ObserveGet(string, time.Duration, int64) {}

// ObserveBody is Observe with the shape of remote.BodyObserver: the time a
// response's body took from its headers to its last byte. Every kind
// counts; small bodies fall under MinSample.
func (m *Meter) ObserveBody(_ string, took time.Duration, n int64) { m.Observe(n, took) }

// Rate returns the estimate in bytes per second; ok is false before the
// first sample.
func (m *Meter) Rate() (bytesPerSecond float64, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.recent) == 0 {
		return 0, false
	}
	return slices.Max(m.recent), true
}

// Faster reports whether the estimate exceeds bytesPerSecond; false without
// an estimate or with bytesPerSecond <= 0.
func (m *Meter) Faster(bytesPerSecond float64) bool {
	r, ok := m.Rate()
	return ok && bytesPerSecond > 0 && r > bytesPerSecond
}
