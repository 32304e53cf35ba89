package remote

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
	"golang.org/x/sync/semaphore"
)

// DefaultTimeout bounds one request when Options.Timeout is not set.
const DefaultTimeout = 30 * time.Second

// Options configure a Client.
type Options struct {
	// HostsDirs are containerd-style hosts directories (for example
	// /etc/containerd/certs.d) searched in order for <host>/hosts.toml; the
	// first directory that has one for a host wins. May be empty.
	HostsDirs []string
	// Credentials answers the user name and secret for a registry host (the
	// host actually contacted, e.g. "registry-1.docker.io"). nil: anonymous.
	Credentials func(host string) (user, secret string, err error)
	// Insecure lists hosts ("host" or "host:port") reached over plain HTTP.
	// Loopback registries (localhost, 127.0.0.0/8, ::1) always are.
	Insecure []string
	// Timeout bounds a small fetch (manifest, small blob, referrers) from
	// request to last body byte; for range reads and streams it bounds the
	// wait for the response and every stall while reading the body.
	// Default DefaultTimeout.
	Timeout time.Duration
	// DialTimeout bounds establishing a connection (0: 30s) and
	// ResponseHeaderTimeout the wait for response headers once a request is
	// sent (0: only Timeout bounds it). A timed out attempt is retried.
	DialTimeout, ResponseHeaderTimeout time.Duration
	// Retry governs retries of manifest, index, referrers and small blob
	// requests; BlobRetry those of range reads and streams of layer blobs
	// (zero value: Retry). Zero value: DefaultRetry.
	Retry, BlobRetry RetryPolicy
	// Mirrors lists extra endpoints per registry host (as written in image
	// refs), tried in order after the mirrors of hosts.toml and before the
	// registry itself.
	Mirrors map[string][]Mirror
	// Observer receives one observation per manifest, blob or range GET;
	// nil: none.
	Observer Observer
	// MaxConcurrency bounds the requests in flight (sent and their body not
	// yet closed) to all registries and blob storage, for every user of the
	// Client: span reads, read-ahead, background fetch, index and zTOC
	// fetches. A request waits for a slot as long as its context allows.
	// Token requests are not counted. 0 or less: unbounded.
	MaxConcurrency int64
	// DirectURLValidFor bounds how long a blob storage URL that a registry
	// redirected a range read to is reused after its last successful read
	// ([blob] valid_interval): a later read asks the registry again, which
	// answers with a fresh URL and re-checks access. 0: reused until it
	// fails. Negative ([blob] check_always): never reused, every read goes
	// through the registry.
	DirectURLValidFor time.Duration
	// AuthTTL is how long a registry's credentials and tokens are used
	// before the credentials are read again and tokens fetched anew
	// ([resolver] auth_client_ttl_sec). 0 or less: until a token expires or
	// the registry refuses what was sent.
	AuthTTL time.Duration
	// Now is the clock of token expiry, of DirectURLValidFor and of
	// AuthTTL; nil: time.Now.
	Now func() time.Time
}

// Mirror is an endpoint serving a registry's content, configured outside
// hosts.toml (the daemon's [resolver.host."<registry>".mirrors]).
type Mirror struct {
	// Host is "host[:port]", optionally with a scheme and a path prefix
	// ("https://mirror.example/base"; the path defaults to /v2).
	Host string
	// Insecure talks to the mirror over plain HTTP.
	Insecure bool
	// RequestTimeout bounds each whole request to the mirror; 0: none
	// beyond the Client's bounds.
	RequestTimeout time.Duration
}

// Client fetches manifests, blobs and referrers from registries. It is safe
// for concurrent use; create one per daemon so that connections and tokens
// are shared.
type Client struct {
	opts      Options
	timeout   time.Duration
	retry     RetryPolicy
	blobRetry RetryPolicy
	auth      *authorizer
	slots     *semaphore.Weighted                   // Options.MaxConcurrency; nil: unbounded
	afterFunc func(time.Duration, func()) stopTimer // timers of the watchdogs

	mu    sync.Mutex
	hosts map[string][]docker.RegistryHost // by reference host; read once
}

// New returns a Client. hosts.toml files are read on the first request to
// each registry and kept for the Client's lifetime.
func New(opts Options) *Client {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	opts.HostsDirs = slices.Clone(opts.HostsDirs)
	opts.Insecure = slices.Clone(opts.Insecure)
	c := &Client{
		opts: opts, timeout: timeout, afterFunc: realAfterFunc,
		retry: opts.Retry.withDefaults(DefaultRetry), hosts: map[string][]docker.RegistryHost{},
	}
	c.blobRetry = opts.BlobRetry.withDefaults(c.retry)
	if opts.MaxConcurrency > 0 {
		c.slots = semaphore.NewWeighted(opts.MaxConcurrency)
	}
	tokenClient := &http.Client{Transport: c.transport(http.DefaultTransport.(*http.Transport).Clone())}
	c.auth = newAuthorizer(tokenClient, opts.Credentials, opts.Now, opts.AuthTTL)
	return c
}

// now reads the Client's clock.
func (c *Client) now() time.Time {
	if c.opts.Now != nil {
		return c.opts.Now()
	}
	return time.Now()
}

// transport applies the dial and response header timeouts to t.
func (c *Client) transport(t *http.Transport) *http.Transport {
	dial := c.opts.DialTimeout
	if dial <= 0 {
		dial = 30 * time.Second
	}
	t.DialContext = (&net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}).DialContext
	if c.opts.ResponseHeaderTimeout > 0 {
		t.ResponseHeaderTimeout = c.opts.ResponseHeaderTimeout
	}
	// Span reads run many requests to one registry at once (parallel
	// parts, read-ahead, background workers): keep their connections for
	// reuse instead of Go's default of 2 idle per host, so they don't pay
	// a new handshake and TCP slow start each time.
	t.MaxIdleConnsPerHost = maxIdlePerHost
	if t.MaxIdleConns < maxIdlePerHost {
		t.MaxIdleConns = maxIdlePerHost
	}
	return t
}

// maxIdlePerHost is how many idle connections to one registry host are kept.
const maxIdlePerHost = 32

// updateClient adjusts the HTTP clients containerd's ConfigureHosts builds.
func (c *Client) updateClient(client *http.Client) error {
	if t, ok := client.Transport.(*http.Transport); ok {
		c.transport(t)
	}
	return nil
}

// repository is the registry host and repository name of an image ref.
type repository struct {
	spec reference.Spec
	host string // as written in the ref, e.g. "127.0.0.1:5000" or "docker.io"
	name string // e.g. "library/alpine"
}

func parseRef(ref string) (repository, error) {
	spec, err := reference.Parse(ref)
	if err != nil {
		return repository{}, fmt.Errorf("image ref %q: %w: %w", ref, err, errdefs.ErrInvalidArgument)
	}
	host := spec.Hostname()
	name, ok := strings.CutPrefix(spec.Locator, host+"/")
	if !ok || name == "" {
		return repository{}, fmt.Errorf("image ref %q has no repository: %w", ref, errdefs.ErrInvalidArgument)
	}
	return repository{spec: spec, host: host, name: name}, nil
}

// registryHosts returns the endpoints for a reference host, mirrors first
// and the origin last, configured once through containerd's ConfigureHosts
// so that their HTTP clients and authorizers (and cached tokens) are reused.
func (c *Client) registryHosts(ctx context.Context, host string) ([]docker.RegistryHost, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if hosts, ok := c.hosts[host]; ok {
		return hosts, nil
	}
	hostOpts := config.HostOptions{
		HostDir:      c.hostDir,
		UpdateClient: c.updateClient,
	}
	if c.plainHTTP(host) {
		hostOpts.DefaultScheme = "http"
	}
	hosts, err := config.ConfigureHosts(ctx, hostOpts)(host)
	if err != nil {
		return nil, fmt.Errorf("configure registry hosts for %s: %w", host, err)
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("configure registry hosts for %s: no endpoints: %w", host, errdefs.ErrNotFound)
	}
	extra := make([]docker.RegistryHost, 0, len(c.opts.Mirrors[host]))
	for _, m := range c.opts.Mirrors[host] {
		rh, err := mirrorHost(m, hosts[len(hosts)-1])
		if err != nil {
			return nil, fmt.Errorf("mirror of %s: %w", host, err)
		}
		extra = append(extra, rh)
	}
	hosts = slices.Insert(hosts, len(hosts)-1, extra...)
	for i := range hosts {
		hosts[i].Authorizer = c.auth // ours: re-authenticates on 401 and 403
	}
	c.hosts[host] = hosts
	return hosts, nil
}

// mirrorHost is the endpoint of a configured mirror; its HTTP client is a
// copy of the origin's.
func mirrorHost(m Mirror, origin docker.RegistryHost) (docker.RegistryHost, error) {
	raw := m.Host
	if !strings.Contains(raw, "://") {
		scheme := "https"
		if m.Insecure || docker.IsLocalhost(raw) {
			scheme = "http"
		}
		raw = scheme + "://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return docker.RegistryHost{}, fmt.Errorf("mirror host %q: not host[:port] or a URL: %w", m.Host, errdefs.ErrInvalidArgument)
	}
	path := strings.TrimSuffix(u.Path, "/")
	if !strings.HasSuffix(path, "/v2") {
		path += "/v2"
	}
	client := &http.Client{}
	if origin.Client != nil {
		*client = *origin.Client
	}
	if m.RequestTimeout > 0 {
		client.Timeout = m.RequestTimeout
	}
	return docker.RegistryHost{
		Client: client, Host: u.Host, Scheme: u.Scheme, Path: path,
		Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
	}, nil
}

// hostDir finds the hosts directory for host in the first of HostsDirs that
// has one.
func (c *Client) hostDir(host string) (string, error) {
	for _, root := range c.opts.HostsDirs {
		dir, err := config.HostDirFromRoot(root)(host)
		if err == nil {
			return dir, nil
		}
		if !errdefs.IsNotFound(err) {
			return "", err
		}
	}
	return "", errdefs.ErrNotFound
}

func (c *Client) plainHTTP(host string) bool {
	if docker.IsLocalhost(host) {
		return true
	}
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	for _, h := range c.opts.Insecure {
		if h == host || h == name {
			return true
		}
	}
	return false
}

// isMirror reports whether endpoint serves refHost's content as a mirror, in
// which case requests name the origin with the "ns" query parameter.
func isMirror(endpoint docker.RegistryHost, refHost string) bool {
	if endpoint.Host == refHost {
		return false
	}
	return refHost != DockerHub || endpoint.Host != DockerHubRegistry
}
