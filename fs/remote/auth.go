package remote

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/auth"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
)

// authorizer answers registry challenges for every endpoint of a Client:
// basic credentials, or bearer tokens fetched from the challenge's realm
// and cached per host and scope. Unlike containerd's authorizer it drops a
// token the registry refused (401, or 403 as some registries answer an
// expired token) and re-reads the credentials, so the caller's one retry
// re-authenticates instead of sending the same token again.
type authorizer struct {
	client *http.Client // for token requests
	creds  func(host string) (string, string, error)
	now    func() time.Time // clock of token expiry and of ttl
	ttl    time.Duration    // Options.AuthTTL; 0: none

	mu    sync.Mutex
	hosts map[string]*hostAuth // by URL host
}

var _ docker.Authorizer = (*authorizer)(nil)

// hostAuth is what one host asked for. Fields are guarded by authorizer.mu.
type hostAuth struct {
	scheme       auth.AuthenticationScheme
	challenge    auth.Challenge // bearer only
	user, secret string
	since        time.Time               // when user and secret were read
	tokens       map[string]*tokenResult // bearer: by scopes
}

// tokenResult is one token fetch, shared by concurrent requests.
type tokenResult struct {
	ready   chan struct{}
	token   string
	expires time.Time // zero: until refused
	err     error
}

func newAuthorizer(client *http.Client, creds func(string) (string, string, error), now func() time.Time, ttl time.Duration) *authorizer {
	if now == nil {
		now = time.Now
	}
	return &authorizer{client: client, creds: creds, now: now, ttl: max(ttl, 0), hosts: map[string]*hostAuth{}}
}

// renew re-reads h's credentials and forgets its tokens once they are ttl
// old, so that rotated credentials apply and tokens are fetched anew. A
// source that fails keeps the credentials held; they are tried again a ttl
// later.
func (a *authorizer) renew(host string, h *hostAuth) {
	if a.ttl <= 0 {
		return
	}
	a.mu.Lock()
	stale := a.now().Sub(h.since) >= a.ttl
	a.mu.Unlock()
	if !stale {
		return
	}
	user, secret, err := a.credentials(host)
	a.mu.Lock()
	defer a.mu.Unlock()
	h.since = a.now()
	if err != nil {
		return
	}
	h.user, h.secret = user, secret
	if h.tokens != nil {
		clear(h.tokens)
	}
}

func (a *authorizer) credentials(host string) (string, string, error) {
	if a.creds == nil {
		return "", "", nil
	}
	user, secret, err := a.creds(host)
	if err != nil {
		return "", "", fmt.Errorf("credentials for %s: %w", host, err)
	}
	return user, secret, nil
}

// Authorize sets the Authorization header for a host that challenged
// before; other hosts (blob storage after a redirect) get none.
func (a *authorizer) Authorize(ctx context.Context, req *http.Request) error {
	a.mu.Lock()
	h := a.hosts[req.URL.Host]
	a.mu.Unlock()
	if h != nil {
		a.renew(req.URL.Host, h)
	}
	a.mu.Lock()
	var scheme auth.AuthenticationScheme
	var user, secret string
	if h != nil {
		scheme, user, secret = h.scheme, h.user, h.secret
	}
	a.mu.Unlock()
	switch {
	case h == nil:
		return nil
	case scheme == auth.BasicAuth:
		if user != "" || secret != "" {
			req.SetBasicAuth(user, secret)
		}
		return nil
	}
	tok, err := a.token(ctx, req.URL.Host, h)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	return nil
}

// token returns a cached token for the request's scopes or fetches one.
func (a *authorizer) token(ctx context.Context, host string, h *hostAuth) (string, error) {
	a.mu.Lock()
	c, user, secret := h.challenge, h.user, h.secret
	to, err := auth.GenerateTokenOptions(ctx, host, user, secret, c)
	if err != nil {
		a.mu.Unlock()
		return "", fmt.Errorf("token options for %s: %w", host, err)
	}
	to.Scopes = docker.GetTokenScopes(ctx, to.Scopes)
	key := strings.Join(to.Scopes, " ")
	r, ok := h.tokens[key]
	if ok && r.done() && !r.expires.IsZero() && a.now().After(r.expires) {
		ok = false
	}
	if !ok {
		r = &tokenResult{ready: make(chan struct{})}
		h.tokens[key] = r
	}
	a.mu.Unlock()
	if !ok {
		r.token, r.expires, r.err = a.fetchToken(ctx, to)
		if r.err != nil {
			a.mu.Lock()
			if h.tokens[key] == r {
				delete(h.tokens, key)
			}
			a.mu.Unlock()
		}
		close(r.ready)
	}
	select {
	case <-r.ready:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	return r.token, r.err
}

// fetchToken asks the realm for a token: an OAuth POST when there is a
// secret (falling back to GET for token servers without POST), else GET.
func (a *authorizer) fetchToken(ctx context.Context, to auth.TokenOptions) (string, time.Time, error) {
	now := a.now()
	if to.Secret != "" {
		resp, err := auth.FetchTokenWithOAuth(ctx, a.client, nil, "soci-snapshotter", to)
		if err == nil {
			return resp.AccessToken, expiry(now, resp.ExpiresInSeconds), nil
		}
		var us remoteerrors.ErrUnexpectedStatus
		if !errors.As(err, &us) || !slices.Contains([]int{400, 401, 404, 405}, us.StatusCode) {
			return "", time.Time{}, fmt.Errorf("fetch token from %s: %w", to.Realm, err)
		}
	}
	resp, err := auth.FetchToken(ctx, a.client, nil, to)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("fetch token from %s: %w", to.Realm, err)
	}
	tok := resp.Token
	if tok == "" {
		tok = resp.AccessToken
	}
	return tok, expiry(now, resp.ExpiresInSeconds), nil
}

// expiry is when a token issued at now stops being used: a little before
// the server says it expires. 0 seconds: until the registry refuses it.
func expiry(now time.Time, seconds int) time.Time {
	if seconds <= 0 {
		return time.Time{}
	}
	d := time.Duration(seconds) * time.Second
	return now.Add(d - d/10)
}

// AddResponses learns from a 401 or 403: a new challenge (re)configures the
// host; a refusal of the token or credentials sent drops that token and
// re-reads the credentials. The caller retries once.
func (a *authorizer) AddResponses(ctx context.Context, responses []*http.Response) error {
	last := responses[len(responses)-1]
	host := last.Request.URL.Host
	sent := last.Request.Header.Get("Authorization")
	challenges := auth.ParseAuthHeader(last.Header)
	user, secret, err := a.credentials(host)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.hosts[host]
	for _, c := range challenges {
		switch c.Scheme {
		case auth.BearerAuth:
			if old != nil && old.scheme == auth.BearerAuth && sameRealm(old.challenge, c) {
				old.challenge, old.user, old.secret, old.since = c, user, secret, a.now()
				old.drop(sent)
				return nil
			}
			a.hosts[host] = &hostAuth{scheme: c.Scheme, challenge: c, user: user, secret: secret, since: a.now(), tokens: map[string]*tokenResult{}}
			return nil
		case auth.BasicAuth:
			if user == "" && secret == "" {
				return fmt.Errorf("%s asks for basic auth: no credentials: %w", host, errdefs.ErrUnauthenticated)
			}
			a.hosts[host] = &hostAuth{scheme: c.Scheme, user: user, secret: secret, since: a.now()}
			return nil
		}
	}
	if len(challenges) == 0 && old != nil && sent != "" {
		// A 403 without a challenge, as registries answer expired tokens.
		old.user, old.secret, old.since = user, secret, a.now()
		old.drop(sent)
		return nil
	}
	return fmt.Errorf("no supported authentication challenge from %s: %w", host, errdefs.ErrNotImplemented)
}

// done reports whether the fetch is over; only then are the other fields
// readable.
func (r *tokenResult) done() bool {
	select {
	case <-r.ready:
		return true
	default:
		return false
	}
}

// drop forgets the bearer token in the Authorization header sent.
func (h *hostAuth) drop(sent string) {
	tok, ok := strings.CutPrefix(sent, "Bearer ")
	if !ok {
		return
	}
	for k, r := range h.tokens {
		if r.done() && r.token == tok {
			delete(h.tokens, k)
		}
	}
}

func sameRealm(a, b auth.Challenge) bool {
	return a.Parameters["realm"] == b.Parameters["realm"] && a.Parameters["service"] == b.Parameters["service"]
}
