package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/errdefs"
	dockerconfig "github.com/docker/cli/cli/config"
	"github.com/urfave/cli/v2"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// Registry flags of push: the names and meanings are those of containerd's
// ctr, which the reference soci CLI took over.
const (
	plainHTTPFlag  = "plain-http"
	skipVerifyFlag = "skip-verify"
	hostsDirFlag   = "hosts-dir"
	userFlag       = "user"
	refreshFlag    = "refresh"
	tlsCACertFlag  = "tlscacert"
	tlsCertFlag    = "tlscert"
	tlsKeyFlag     = "tlskey"
	httpDumpFlag   = "http-dump"
	httpTraceFlag  = "http-trace"
)

func registryFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: plainHTTPFlag, Usage: "talk to the registry over plain HTTP"},
		&cli.BoolFlag{Name: skipVerifyFlag, Aliases: []string{"k"}, Usage: "skip TLS certificate verification"},
		&cli.StringFlag{Name: hostsDirFlag, Usage: "comma-separated directories in containerd's hosts.toml layout (<dir>/<host>/hosts.toml)"},
		&cli.StringFlag{Name: userFlag, Aliases: []string{"u"}, Usage: "registry user[:password]"},
		&cli.StringFlag{Name: refreshFlag, Usage: "refresh (identity) token to exchange at the registry's token server (used when --user is not given)"},
		&cli.StringFlag{Name: tlsCACertFlag, Usage: "PEM file of the CA(s) that sign the registry's certificate (replaces the system roots)"},
		&cli.StringFlag{Name: tlsCertFlag, Usage: "PEM file of the TLS client certificate (with --tlskey)"},
		&cli.StringFlag{Name: tlsKeyFlag, Usage: "PEM file of the TLS client key (with --tlscert)"},
		&cli.BoolFlag{Name: httpDumpFlag, Usage: "print every registry request and response (headers; credentials redacted) on stderr"},
		&cli.BoolFlag{Name: httpTraceFlag, Usage: "print connection events (DNS, connect, TLS, first byte) of registry requests on stderr"},
	}
}

// registryOptions is what the registry flags say, read once so that the
// connection set-up can be tested without a command line.
type registryOptions struct {
	plainHTTP, skipVerify bool
	hostsDir              string
	user, refresh         string
	tls                   tlsFiles
	dump, trace, debug    bool
	stdout, stderr        io.Writer
}

func registryOptionsFrom(c *cli.Context) registryOptions {
	return registryOptions{
		plainHTTP: c.Bool(plainHTTPFlag), skipVerify: c.Bool(skipVerifyFlag),
		hostsDir: c.String(hostsDirFlag), user: c.String(userFlag), refresh: c.String(refreshFlag),
		tls:  tlsFiles{ca: c.String(tlsCACertFlag), cert: c.String(tlsCertFlag), key: c.String(tlsKeyFlag)},
		dump: c.Bool(httpDumpFlag), trace: c.Bool(httpTraceFlag), debug: c.Bool(debugFlag),
		stdout: c.App.Writer, stderr: c.App.ErrWriter,
	}
}

// repository opens the remote repository of locator ("host/path") with the
// endpoint, TLS and credentials that the flags, hosts.toml and the docker
// config give for its host.
func repository(ctx context.Context, o registryOptions, locator string) (*remote.Repository, error) {
	host, path, _ := strings.Cut(locator, "/")
	opts := config.HostOptions{HostDir: hostDirs(o.hostsDir)}
	if o.plainHTTP {
		opts.DefaultScheme = "http"
	}
	defaultTLS, err := o.tls.config(o.skipVerify)
	if err != nil {
		return nil, err
	}
	opts.DefaultTLS = defaultTLS
	hosts, err := config.ConfigureHosts(ctx, opts)(host)
	if err != nil {
		return nil, fmt.Errorf("configure registry host %s: %w", host, err)
	}
	var endpoint *docker.RegistryHost
	for i := range hosts {
		if hosts[i].Capabilities.Has(docker.HostCapabilityPush) {
			endpoint = &hosts[i]
			break
		}
	}
	if endpoint == nil {
		return nil, fmt.Errorf("registry host %s: no endpoint with push capability", host)
	}
	repo, err := remote.NewRepository(endpoint.Host + "/" + path)
	if err != nil {
		return nil, fmt.Errorf("repository %s: %w", locator, err)
	}
	repo.PlainHTTP = endpoint.Scheme == "http" || (insecure(o, host) && !speaksTLS(ctx, endpoint.Host))
	httpClient := &http.Client{Transport: http.DefaultTransport}
	if endpoint.Client != nil {
		copied := *endpoint.Client
		httpClient = &copied
	}
	if httpClient.Transport == nil {
		httpClient.Transport = http.DefaultTransport
	}
	if o.tls.given() {
		// Files named on the command line are used as given, also for a
		// loopback registry (where containerd would skip verification).
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = defaultTLS
		httpClient.Transport = tr
	}
	httpClient.Transport = debugTransport(httpClient.Transport, o)
	cred := credentials(o, host)
	repo.Client = &auth.Client{
		Client:     httpClient,
		Cache:      auth.NewCache(),
		Credential: func(context.Context, string) (auth.Credential, error) { return cred, nil },
	}
	return repo, nil
}

// debugTransport wraps rt with what --http-dump, --http-trace and --debug
// ask for.
func debugTransport(rt http.RoundTripper, o registryOptions) http.RoundTripper {
	if o.trace {
		rt = &traceTransport{next: rt, out: newLineWriter(o.stderr)}
	}
	if o.dump {
		rt = &dumpTransport{next: rt, out: newLineWriter(o.stderr)}
	}
	if o.debug {
		rt = &debugLineTransport{next: rt, out: newLineWriter(o.stdout)}
	}
	return rt
}

// hostDirs finds <dir>/<host>/hosts.toml in the first of the comma-separated
// dirs that has one (with the port spelled as in containerd's layout).
func hostDirs(list string) func(string) (string, error) {
	var dirs []string
	for _, d := range strings.Split(list, ",") {
		if d = strings.TrimSpace(d); d != "" {
			dirs = append(dirs, d)
		}
	}
	if len(dirs) == 0 {
		return nil
	}
	return func(host string) (string, error) {
		for _, d := range dirs {
			dir, err := config.HostDirFromRoot(d)(host)
			if err == nil && dir != "" {
				return dir, nil
			}
			if err != nil && !errdefs.IsNotFound(err) {
				return "", err
			}
			if _, err := os.Stat(filepath.Join(d, host)); err == nil {
				return filepath.Join(d, host), nil
			}
		}
		return "", errdefs.ErrNotFound
	}
}

// credentials come from --user, else --refresh (a refresh token with no
// user name, as ctr sends it), else the docker config file and its
// credential helpers.
func credentials(o registryOptions, host string) auth.Credential {
	if o.user != "" {
		user, pass, _ := strings.Cut(o.user, ":")
		return auth.Credential{Username: user, Password: pass}
	}
	if o.refresh != "" {
		return auth.Credential{RefreshToken: o.refresh}
	}
	cf := dockerconfig.LoadDefaultConfigFile(io.Discard)
	if cf == nil {
		return auth.EmptyCredential
	}
	if host == "docker.io" {
		host = "https://index.docker.io/v1/"
	}
	ac, err := cf.GetAuthConfig(host)
	if err != nil {
		return auth.EmptyCredential
	}
	switch {
	case ac.IdentityToken != "":
		return auth.Credential{RefreshToken: ac.IdentityToken}
	case ac.RegistryToken != "":
		return auth.Credential{AccessToken: ac.RegistryToken}
	}
	return auth.Credential{Username: ac.Username, Password: ac.Password}
}

// insecure says whether the registry host may be spoken to over plain HTTP
// when it does not speak TLS: with --skip-verify (how nerdctl passes an
// insecure registry) or on loopback, as containerd does.
func insecure(o registryOptions, host string) bool {
	if o.skipVerify {
		return true
	}
	local, _ := docker.MatchLocalhost(host)
	return local
}

// speaksTLS probes https://host/v2/ (certificates unchecked): false when the
// registry answers plain HTTP only.
func speaksTLS(ctx context.Context, host string) bool {
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/v2/", nil)
	if err != nil {
		return true
	}
	resp, err := client.Do(req)
	if err != nil {
		var rh tls.RecordHeaderError
		return !errors.As(err, &rh) && !errors.Is(err, http.ErrSchemeMismatch)
	}
	resp.Body.Close()
	return true
}
