package span

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

// corruptFirst flips a byte of the first n responses of f.
type corruptFirst struct {
	f  *fakeFetcher
	mu sync.Mutex
	n  int
}

func (c *corruptFirst) FetchAt(ctx context.Context, p []byte, off int64) (int, error) {
	n, err := c.f.FetchAt(ctx, p, off)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n > 0 && n > 0 {
		p[0] ^= 0xff
		c.n--
	}
	return n, err
}

// TestVerifyRetries: a span whose bytes fail verification is fetched again,
// alone, up to VerifyRetries more times ([blob]
// max_span_verification_retries) before the read fails.
func TestVerifyRetries(t *testing.T) {
	l := buildLayer(t, 6, []int{1000, 1000, 1000}, true)
	for _, tc := range []struct {
		name             string
		retries, corrupt int
		wantErr          bool
		wantRequests     int
	}{
		{"no retries", 0, 1, true, 1},
		{"recovers", 2, 2, false, 3},
		{"gives up", 2, 3, true, 3},
		{"first fetch good", 2, 0, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeFetcher{blob: l.blob}
			c := cache.NewMemory()
			m := newManager(t, l, &corruptFirst{f: f, n: tc.corrupt}, c, func(o *Options) { o.VerifyRetries = tc.retries })
			p := make([]byte, 10)
			n, err := m.FetchAt(t.Context(), p, 0)
			if tc.wantErr {
				if !errors.Is(err, ErrVerification) {
					t.Fatalf("FetchAt = %d, %v; want ErrVerification", n, err)
				}
			} else if err != nil || n != len(p) || !bytes.Equal(p, l.data[:10]) {
				t.Fatalf("FetchAt = %d, %v", n, err)
			}
			if got := f.fetchesPerSpan(l.table)[0]; got != tc.wantRequests {
				t.Errorf("span 0 fetched %d times, want %d", got, tc.wantRequests)
			}
			if tc.wantErr && c.Len() != 0 {
				t.Errorf("unverified span cached")
			}
		})
	}
}
