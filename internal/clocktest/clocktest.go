// Package clocktest is a clock for tests of time-based behaviour: it moves
// only when told, so tests advance it instead of sleeping.
package clocktest

import (
	"sync"
	"time"
)

// Fake is a clock that moves only on Advance. Its Now fits the Now fields
// of the span and remote Options. It is safe for concurrent use.
type Fake struct {
	mu  sync.Mutex
	now time.Time
}

// New returns a Fake at a fixed, arbitrary instant.
func New() *Fake { return &Fake{now: time.Unix(1_700_000_000, 0)} }

// Now returns the clock's time.
func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
