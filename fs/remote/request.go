package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// maxRedirects bounds the redirects followed by one request.
const maxRedirects = 10

// get sends GET <host>/v2/<repo>/<suffix> to each endpoint of repo's host
// that has capability, in order (mirrors first, then the origin), and
// returns the first 2xx response with the endpoint that answered. When every
// endpoint fails, the error is the last one (the origin's, which is
// authoritative). The origin is retried by the Client's Retry policy.
func (c *Client) get(ctx context.Context, repo repository, capability docker.HostCapabilities,
	suffix string, query url.Values, header http.Header) (*http.Response, docker.RegistryHost, error) {
	return c.send(ctx, c.retry, repo, capability, suffix, query, header)
}

// send is get with the retry policy p.
func (c *Client) send(ctx context.Context, p RetryPolicy, repo repository, capability docker.HostCapabilities,
	suffix string, query url.Values, header http.Header) (*http.Response, docker.RegistryHost, error) {
	return c.sendExcept(ctx, p, repo, capability, suffix, query, header, nil)
}

// errNoEndpoint: every endpoint of a registry was left out (by capability,
// or by sendExcept).
var errNoEndpoint = errors.New("no endpoint left")

// sendExcept is send that skips the endpoints named in except (by
// docker.RegistryHost.Host): those that answered, but not usefully.
func (c *Client) sendExcept(ctx context.Context, p RetryPolicy, repo repository, capability docker.HostCapabilities,
	suffix string, query url.Values, header http.Header, except []string) (*http.Response, docker.RegistryHost, error) {
	hosts, err := c.registryHosts(ctx, repo.host)
	if err != nil {
		return nil, docker.RegistryHost{}, err
	}
	ctx, err = docker.ContextWithRepositoryScope(ctx, repo.spec, false)
	if err != nil {
		return nil, docker.RegistryHost{}, fmt.Errorf("token scope of %s: %w", repo.spec.Locator, err)
	}
	hosts = slices.DeleteFunc(slices.Clone(hosts), func(h docker.RegistryHost) bool {
		return !h.Capabilities.Has(capability) || slices.Contains(except, h.Host)
	})
	lastErr := fmt.Errorf("%w of %s with capability %d: %w", errNoEndpoint, repo.host, capability, errdefs.ErrNotFound)
	for i, host := range hosts {
		u := endpointURL(host, repo, suffix, query)
		policy := RetryPolicy{MaxRetries: -1} // a failing mirror is skipped at once
		if i == len(hosts)-1 {
			policy = p
		}
		resp, err := c.doWithRetries(ctx, host, u, header, policy)
		if err == nil {
			return resp, host, nil
		}
		if ctx.Err() != nil {
			return nil, host, err
		}
		log.G(ctx).WithError(err).WithField("host", host.Host).Debug("registry endpoint failed")
		lastErr = err
	}
	return nil, docker.RegistryHost{}, lastErr
}

func endpointURL(host docker.RegistryHost, repo repository, suffix string, query url.Values) string {
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	if isMirror(host, repo.host) {
		q.Set("ns", repo.host)
	}
	u := url.URL{
		Scheme:   host.Scheme,
		Host:     host.Host,
		Path:     host.Path + "/" + repo.name + "/" + suffix,
		RawQuery: q.Encode(),
	}
	return u.String()
}

// doWithRetries sends an authorized request, retrying transient failures
// as p allows.
func (c *Client) doWithRetries(ctx context.Context, host docker.RegistryHost, u string, header http.Header, p RetryPolicy) (*http.Response, error) {
	attempts := p.attempts()
	for attempt := 1; ; attempt++ {
		resp, err := c.doAuthorized(ctx, host, u, header)
		if err == nil || attempt >= attempts || !transient(ctx, err) {
			return resp, err
		}
		wait := p.wait(attempt, err)
		log.G(ctx).WithError(err).WithField("attempt", attempt).WithField("wait", wait).Debug("retrying request to the registry")
		if !sleep(ctx, wait) {
			return nil, err
		}
	}
}

// doAuthorized sends the request with the host's authorization; after a 401
// or 403 it hands the challenge to the authorizer and tries once more. Only
// a 2xx response is returned.
func (c *Client) doAuthorized(ctx context.Context, host docker.RegistryHost, u string, header http.Header) (*http.Response, error) {
	resp, err := c.do(ctx, host, u, header)
	if err != nil {
		return nil, err
	}
	if (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) && host.Authorizer != nil {
		authErr := host.Authorizer.AddResponses(ctx, []*http.Response{resp})
		if authErr != nil {
			return nil, newStatusError(resp, authErr)
		}
		discard(resp)
		if resp, err = c.do(ctx, host, u, header); err != nil {
			return nil, err
		}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, newStatusError(resp, nil)
	}
	return resp, nil
}

// do sends one GET with the host's headers and authorization, following
// redirects.
func (c *Client) do(ctx context.Context, host docker.RegistryHost, u string, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w: %w", redact(u), err, errdefs.ErrInvalidArgument)
	}
	for k, v := range host.Header {
		req.Header[k] = append([]string(nil), v...)
	}
	for k, v := range header {
		req.Header[k] = append([]string(nil), v...)
	}
	if host.Authorizer != nil {
		if err := host.Authorizer.Authorize(ctx, req); err != nil {
			return nil, fmt.Errorf("authorize GET %s: %w", redact(u), err)
		}
	}
	release, err := c.acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", redact(u), err)
	}
	resp, err := httpClient(ctx, host, true).Do(req)
	if err != nil {
		release()
		return nil, &netError{url: redact(u), err: unwrapURLError(err)}
	}
	holdSlot(resp, release)
	return resp, nil
}

// httpClient is the host's client with a redirect policy for responses
// from registries, which are untrusted: at most maxRedirects hops, no
// loops, http and https only, and the registry's Authorization is never
// sent to another origin (blob storage rejects it, anyone else could steal
// it). With authorize, a redirect within the origin is authorized again
// (tokens are per host); direct blob storage reads pass false.
func httpClient(ctx context.Context, host docker.RegistryHost, authorize bool) *http.Client {
	client := &http.Client{}
	if host.Client != nil {
		*client = *host.Client
	}
	client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		to := req.URL
		if len(via) >= maxRedirects {
			return fmt.Errorf("stopped after %d redirects", maxRedirects)
		}
		if to.Scheme != "http" && to.Scheme != "https" {
			return fmt.Errorf("redirect to %q: only http and https are followed", to.Scheme)
		}
		for _, v := range via {
			if v.URL.String() == to.String() {
				return fmt.Errorf("redirect loop at %s", redact(to.String()))
			}
		}
		if !sameOrigin(via[0].URL, to) {
			req.Header.Del("Authorization")
			return nil
		}
		if authorize && host.Authorizer != nil {
			return host.Authorizer.Authorize(ctx, req)
		}
		return nil
	}
	return client
}

// sameOrigin reports whether a redirect from first to to stays with the
// same server: same host and port, and no downgrade from https to http.
func sameOrigin(first, to *url.URL) bool {
	return to.Host == first.Host && (to.Scheme == first.Scheme || first.Scheme == "http" && to.Scheme == "https")
}

// finalURL is where a response came from after redirects, and whether that
// is a different host than the first request's.
func finalURL(resp *http.Response) (*url.URL, bool) {
	first := resp.Request
	for first.Response != nil && first.Response.Request != nil {
		first = first.Response.Request
	}
	return resp.Request.URL, resp.Request.URL.Host != first.URL.Host
}

// netError is a failure to get a response: connection, TLS, or protocol.
type netError struct {
	url string
	err error
}

func (e *netError) Error() string { return fmt.Sprintf("GET %s: %v", e.url, e.err) }
func (e *netError) Unwrap() error { return e.err }

// transient reports whether a failed request may succeed when retried.
func transient(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var se *statusError
	if errors.As(err, &se) {
		return se.code == http.StatusTooManyRequests || se.code >= 500
	}
	var ne *netError
	return errors.As(err, &ne)
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// redact drops user information and the query (pre-signed blob storage URLs
// carry signatures there) from a URL used in errors and logs.
func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "<malformed URL>"
	}
	p.User = nil
	p.RawQuery = ""
	p.ForceQuery = false
	p.Fragment = ""
	return p.String()
}

// discard drains a little of an unwanted body so the connection can be
// reused, and closes it.
func discard(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
}
