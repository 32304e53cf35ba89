package remote

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// RetryPolicy bounds the retries of one request to a registry's last
// endpoint (the origin) on transient failures: connection errors, timeouts,
// 429 and 5xx. Mirrors are tried once. Waits grow exponentially from
// MinWait to MaxWait with jitter; a Retry-After header (429, 503) is
// honored up to MaxWait. No wait outlasts the request's deadline: when the
// next try could not start in time, the last error is returned at once.
type RetryPolicy struct {
	// MaxRetries is the number of retries after the first attempt; a
	// negative value disables retries, 0 takes the default.
	MaxRetries int
	// MinWait and MaxWait bound the pause between attempts (0: default).
	MinWait, MaxWait time.Duration
}

// DefaultRetry is the policy of a Client whose Options set none.
var DefaultRetry = RetryPolicy{MaxRetries: 2, MinWait: 100 * time.Millisecond, MaxWait: 2 * time.Second}

func (p RetryPolicy) withDefaults(d RetryPolicy) RetryPolicy {
	if p.MaxRetries == 0 {
		p.MaxRetries = d.MaxRetries
	}
	if p.MinWait <= 0 {
		p.MinWait = d.MinWait
	}
	if p.MaxWait <= 0 {
		p.MaxWait = d.MaxWait
	}
	p.MaxWait = max(p.MaxWait, p.MinWait)
	return p
}

// attempts is the total number of tries.
func (p RetryPolicy) attempts() int { return max(p.MaxRetries, 0) + 1 }

// wait is the pause after failed attempt n (1-based) that ended with err.
func (p RetryPolicy) wait(n int, err error) time.Duration {
	var se *statusError
	if errors.As(err, &se) && se.retryAfter > 0 {
		return min(se.retryAfter, p.MaxWait)
	}
	d := p.MinWait
	for i := 1; i < n && d < p.MaxWait; i++ {
		d *= 2
	}
	d = min(d, p.MaxWait)
	// Jitter in [d/2, d] so that many readers do not retry in lockstep.
	return d/2 + rand.N(d/2+1)
}

// sleep pauses for d unless ctx ends first or its deadline would pass
// before the pause is over; it reports whether to try again.
func sleep(ctx context.Context, d time.Duration) bool {
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// maxRetryAfter bounds the seconds of a Retry-After header (waits are
// bounded by RetryPolicy.MaxWait anyway).
const maxRetryAfter = 24 * 60 * 60

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date.
func parseRetryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(min(s, maxRetryAfter)) * time.Second // no overflow
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
