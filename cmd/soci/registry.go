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

// Registry flags of push.
const (
	plainHTTPFlag  = "plain-http"
	skipVerifyFlag = "skip-verify"
	hostsDirFlag   = "hosts-dir"
	userFlag       = "user"
)

func registryFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: plainHTTPFlag, Usage: "talk to the registry over plain HTTP"},
		&cli.BoolFlag{Name: skipVerifyFlag, Aliases: []string{"k"}, Usage: "skip TLS certificate verification"},
		&cli.StringFlag{Name: hostsDirFlag, Usage: "comma-separated directories in containerd's hosts.toml layout (<dir>/<host>/hosts.toml)"},
		&cli.StringFlag{Name: userFlag, Aliases: []string{"u"}, Usage: "registry user[:password]"},
	}
}

// repository opens the remote repository of locator ("host/path") with the
// endpoint, TLS and credentials that the flags, hosts.toml and the docker
// config give for its host.
func repository(ctx context.Context, c *cli.Context, locator string) (*remote.Repository, error) {
	host, path, _ := strings.Cut(locator, "/")
	opts := config.HostOptions{HostDir: hostDirs(c.String(hostsDirFlag))}
	if c.Bool(plainHTTPFlag) {
		opts.DefaultScheme = "http"
	}
	if c.Bool(skipVerifyFlag) {
		opts.DefaultTLS = &tls.Config{InsecureSkipVerify: true}
	}
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
	repo.PlainHTTP = endpoint.Scheme == "http" || (insecure(c, host) && !speaksTLS(ctx, endpoint.Host))
	httpClient := endpoint.Client
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	user, pass := credentials(c, host)
	repo.Client = &auth.Client{
		Client: httpClient,
		Cache:  auth.NewCache(),
		Credential: func(_ context.Context, _ string) (auth.Credential, error) {
			return auth.Credential{Username: user, Password: pass}, nil
		},
	}
	return repo, nil
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

// credentials come from --user, else the docker config file.
func credentials(c *cli.Context, host string) (string, string) {
	if u := c.String(userFlag); u != "" {
		user, pass, _ := strings.Cut(u, ":")
		return user, pass
	}
	cf := dockerconfig.LoadDefaultConfigFile(io.Discard)
	if cf == nil {
		return "", ""
	}
	if host == "docker.io" {
		host = "https://index.docker.io/v1/"
	}
	ac, err := cf.GetAuthConfig(host)
	if err != nil {
		return "", ""
	}
	if ac.IdentityToken != "" {
		return "", ac.IdentityToken
	}
	return ac.Username, ac.Password
}

// insecure says whether the registry host may be spoken to over plain HTTP
// when it does not speak TLS: with --skip-verify (how nerdctl passes an
// insecure registry) or on loopback, as containerd does.
func insecure(c *cli.Context, host string) bool {
	if c.Bool(skipVerifyFlag) {
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
