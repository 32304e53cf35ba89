package config

import (
	"math"
	"time"
)

// Seconds is a duration written in the file as an integer number of seconds,
// the unit upstream's key names (…_sec) promise. Keeping the integer form,
// rather than strings such as "30s", keeps existing files valid.
type Seconds int64

// Duration converts s to a time.Duration. Validated configurations never
// overflow; a negative s (meaningful for a few settings, see their docs)
// gives a negative duration.
func (s Seconds) Duration() time.Duration {
	return time.Duration(s) * time.Second
}

// Milliseconds is a duration written in the file as an integer number of
// milliseconds (keys ending in _msec or Msec).
type Milliseconds int64

// Duration converts m to a time.Duration.
func (m Milliseconds) Duration() time.Duration {
	return time.Duration(m) * time.Millisecond
}

// maxSeconds and maxMilliseconds are the largest values whose Duration does
// not overflow.
const (
	maxSeconds      = Seconds(math.MaxInt64 / int64(time.Second))
	maxMilliseconds = Milliseconds(math.MaxInt64 / int64(time.Millisecond))
)
