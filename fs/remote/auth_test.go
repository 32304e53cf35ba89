package remote

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/internal/clocktest"
)

// tokenRegistry is an in-process registry behind a token server: it takes
// only tokens it issued and has not expired; an expired token is answered
// with 403 and no challenge (as some registries do) or a 401 challenge.
type tokenRegistry struct {
	srv  *httptest.Server
	blob []byte

	mu          sync.Mutex
	issued      int
	valid       map[string]bool
	expiry      int  // expires_in of new tokens
	forbid403   bool // answer an unknown token with 403 instead of 401
	refuseAll   bool // even fresh tokens are refused
	tokenAsks   int
	blobAsks    int
	basicUser   string
	basicSecret string
}

func newTokenRegistry(t *testing.T) *tokenRegistry {
	r := &tokenRegistry{valid: map[string]bool{}, blob: []byte("layer bytes behind a token")}
	r.srv = httptest.NewServer(r)
	t.Cleanup(r.srv.Close)
	return r
}

func (r *tokenRegistry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if req.URL.Path == "/token" && req.Method == http.MethodPost {
		http.NotFound(w, req) // no OAuth endpoint: the client falls back to GET
		return
	}
	if req.URL.Path == "/token" {
		r.tokenAsks++
		if u, p, _ := req.BasicAuth(); u != r.basicUser || p != r.basicSecret {
			http.Error(w, "bad credentials", http.StatusUnauthorized)
			return
		}
		r.issued++
		tok := fmt.Sprintf("t%d", r.issued)
		r.valid[tok] = true
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"token": %q, "expires_in": %d}`, tok, r.expiry)
		return
	}
	r.blobAsks++
	tok, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	switch {
	case ok && r.valid[tok] && !r.refuseAll:
		_, _ = w.Write(r.blob)
	case ok && r.forbid403:
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, `{"errors":[{"code":"DENIED","message":"token expired"}]}`)
	default:
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="reg"`, r.srv.URL))
		w.WriteHeader(http.StatusUnauthorized)
	}
}

func (r *tokenRegistry) expireAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.valid = map[string]bool{}
}

func (r *tokenRegistry) counts() (tokens, blobs int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tokenAsks, r.blobAsks
}

func TestTokenRefreshAfterExpiry(t *testing.T) {
	for _, forbid := range []bool{false, true} {
		t.Run(fmt.Sprintf("403=%v", forbid), func(t *testing.T) {
			reg := newTokenRegistry(t)
			reg.basicUser, reg.basicSecret, reg.forbid403 = "alice", "s3cret-pw", forbid
			desc := blobDesc(reg.blob)
			c := New(Options{Credentials: func(string) (string, string, error) { return "alice", "s3cret-pw", nil }})
			ref := reg.srv.Listener.Addr().String() + "/app:latest"
			ctx := context.Background()
			for range 2 {
				if _, err := c.FetchBlob(ctx, ref, desc); err != nil {
					t.Fatal(err)
				}
			}
			if tok, blobs := reg.counts(); tok != 1 || blobs != 3 {
				t.Fatalf("%d token and %d blob requests, want 1 and 3 (challenge, retry, cached)", tok, blobs)
			}
			reg.expireAll()
			if _, err := c.FetchBlob(ctx, ref, desc); err != nil {
				t.Fatalf("after the token expired: %v", err)
			}
			if tok, blobs := reg.counts(); tok != 2 || blobs != 5 {
				t.Fatalf("%d token and %d blob requests, want 2 and 5 (refused, retried with a new token)", tok, blobs)
			}
			// A registry that refuses every token: one re-authentication, then the error.
			reg.mu.Lock()
			reg.refuseAll = true
			reg.mu.Unlock()
			_, err := c.FetchBlob(ctx, ref, desc)
			want := errdefs.IsUnauthorized
			if forbid {
				want = errdefs.IsPermissionDenied
			}
			if !want(err) {
				t.Fatalf("refused token: %v", err)
			}
			if strings.Contains(err.Error(), "s3cret-pw") {
				t.Fatalf("error leaks the password: %v", err)
			}
			if tok, blobs := reg.counts(); tok != 3 || blobs != 7 {
				t.Fatalf("%d token and %d blob requests, want 3 and 7 (exactly one re-authentication)", tok, blobs)
			}
		})
	}
}

// TestTokenExpiresIn: a token is used until a little before the expires_in
// the token server gave (a tenth of it), then renewed before use.
func TestTokenExpiresIn(t *testing.T) {
	reg := newTokenRegistry(t)
	reg.expiry = 1 // second: used for 900 ms
	desc := blobDesc(reg.blob)
	clock := clocktest.New()
	c := New(Options{Now: clock.Now})
	ref := reg.srv.Listener.Addr().String() + "/app:latest"
	fetch := func(wantTok, wantBlobs int, why string) {
		t.Helper()
		if _, err := c.FetchBlob(context.Background(), ref, desc); err != nil {
			t.Fatal(err)
		}
		if tok, blobs := reg.counts(); tok != wantTok || blobs != wantBlobs {
			t.Fatalf("%d token and %d blob requests, want %d and %d: %s", tok, blobs, wantTok, wantBlobs, why)
		}
	}
	fetch(1, 2, "the first fetch is challenged, then authorized")
	clock.Advance(900 * time.Millisecond)
	fetch(1, 3, "a token still valid was renewed")
	clock.Advance(time.Millisecond)
	fetch(2, 4, "an expired token was not renewed before use")
}

func TestConcurrentRefreshSharesToken(t *testing.T) {
	reg := newTokenRegistry(t)
	desc := blobDesc(reg.blob)
	c := New(Options{})
	ref := reg.srv.Listener.Addr().String() + "/app:latest"
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := c.FetchBlob(context.Background(), ref, desc); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if tok, _ := reg.counts(); tok > 2 {
		t.Fatalf("%d token requests for 20 concurrent fetches", tok)
	}
}

func TestRetryAfterHonored(t *testing.T) {
	var mu sync.Mutex
	var times []time.Time
	blob := []byte("rate limited")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		times = append(times, time.Now())
		n := len(times)
		mu.Unlock()
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		_, _ = w.Write(blob)
	}))
	t.Cleanup(srv.Close)
	c := New(Options{Retry: RetryPolicy{MaxRetries: 3, MinWait: time.Millisecond, MaxWait: 5 * time.Second}})
	if _, err := c.FetchBlob(context.Background(), srv.Listener.Addr().String()+"/app:latest", blobDesc(blob)); err != nil {
		t.Fatal(err)
	}
	if d := times[1].Sub(times[0]); d < 900*time.Millisecond {
		t.Fatalf("retried after %s despite Retry-After: 1", d)
	}
	// A Retry-After beyond the request's deadline fails at once.
	times = nil
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.FetchBlob(ctx, srv.Listener.Addr().String()+"/app:latest", blobDesc(blob)); !errdefs.IsResourceExhausted(err) {
		t.Fatalf("want the 429, got %v", err)
	}
	if time.Since(start) > 200*time.Millisecond {
		t.Fatalf("waited %s for a retry that could not happen in time", time.Since(start))
	}
}

func TestBackoffIsBoundedAndJittered(t *testing.T) {
	p := RetryPolicy{MaxRetries: 8, MinWait: 30 * time.Millisecond, MaxWait: 300 * time.Millisecond}
	for n := 1; n <= 10; n++ {
		w := p.wait(n, nil)
		if w > p.MaxWait || w < 15*time.Millisecond {
			t.Fatalf("wait %d = %s", n, w)
		}
	}
}

func TestConfiguredMirrorFirst(t *testing.T) {
	mirror := newFakeRegistry(t)
	desc := mirror.addBlob(blobContent(1000))
	dead := httptest.NewServer(http.NotFoundHandler())
	origin := dead.Listener.Addr().String()
	dead.Close()
	c := New(Options{Mirrors: map[string][]Mirror{origin: {{Host: mirror.host(), Insecure: true, RequestTimeout: 5 * time.Second}}}})
	p := make([]byte, 100)
	if _, err := c.Blob(origin+"/team/app:latest", desc).FetchAt(context.Background(), p, 10); err != nil {
		t.Fatal(err)
	}
	if mirror.hitCount("blobs") != 1 || mirror.requests[0].URL.Query().Get("ns") != origin {
		t.Fatalf("mirror saw %d blob requests (%v)", mirror.hitCount("blobs"), mirror.requests[0].URL)
	}
}

func blobDesc(b []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(b), Size: int64(len(b))}
}
