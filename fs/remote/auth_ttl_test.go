package remote

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/internal/clocktest"
)

// TestAuthTTL: with AuthTTL ([resolver] auth_client_ttl_sec) a host's
// credentials are read again and its token fetched anew once they are that
// old, even when the token has not expired; without it they are kept.
func TestAuthTTL(t *testing.T) {
	for _, tc := range []struct {
		name string
		ttl  time.Duration
		// credential reads and token requests after a fetch 61 minutes on
		want [2]int
	}{
		{"ttl 1h", time.Hour, [2]int{2, 2}},
		{"no ttl", 0, [2]int{1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newTokenRegistry(t)
			reg.expiry = 3 * 3600 // the token outlives the test
			desc := blobDesc(reg.blob)
			clock := clocktest.New()
			var reads atomic.Int32
			creds := func(string) (string, string, error) {
				reads.Add(1)
				return "", "", nil
			}
			c := New(Options{Now: clock.Now, AuthTTL: tc.ttl, Credentials: creds})
			ref := reg.srv.Listener.Addr().String() + "/app:latest"
			fetch := func(wantReads, wantTok int, why string) {
				t.Helper()
				if _, err := c.FetchBlob(context.Background(), ref, desc); err != nil {
					t.Fatal(err)
				}
				if tok, _ := reg.counts(); int(reads.Load()) != wantReads || tok != wantTok {
					t.Fatalf("%d credential reads and %d token requests, want %d and %d: %s", reads.Load(), tok, wantReads, wantTok, why)
				}
			}
			fetch(1, 1, "the first fetch is challenged, then authorized")
			clock.Advance(30 * time.Minute)
			fetch(1, 1, "within the ttl")
			clock.Advance(31 * time.Minute)
			fetch(tc.want[0], tc.want[1], "past the ttl")
		})
	}
}
