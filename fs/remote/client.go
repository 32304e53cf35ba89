package remote

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
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
}

// Client fetches manifests, blobs and referrers from registries. It is safe
// for concurrent use; create one per daemon so that connections and tokens
// are shared.
type Client struct {
	opts    Options
	timeout time.Duration

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
	return &Client{opts: opts, timeout: timeout, hosts: map[string][]docker.RegistryHost{}}
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
		return repository{}, fmt.Errorf("image ref %q: %v: %w", ref, err, errdefs.ErrInvalidArgument)
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
		HostDir:     c.hostDir,
		Credentials: c.opts.Credentials,
	}
	if c.plainHTTP(host) {
		hostOpts.DefaultScheme = "http"
	}
	hosts, err := config.ConfigureHosts(ctx, hostOpts)(host)
	if err != nil {
		return nil, fmt.Errorf("configure registry hosts for %s: %w", host, err)
	}
	c.hosts[host] = hosts
	return hosts, nil
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
	return refHost != "docker.io" || endpoint.Host != "registry-1.docker.io"
}
