package service

import (
	"context"
	"time"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/fs/remote"
	"github.com/fastsoci/soci-snapshotter/fs/remote/kubekeychain"
	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// registryOptions maps [http], [blob] and [resolver] onto the registry
// client. The hosts.toml files are read from [resolver] config_path, by
// default containerd's own directory, so that mirrors, TLS and headers apply
// to every fetch as they do to containerd's pulls. Credentials come from the
// docker config.json of the daemon's environment ($DOCKER_CONFIG, else
// ~/.docker), credential helpers included.
func registryOptions(cfg *config.Config) remote.Options {
	opts := remote.Options{
		HostsDirs:             cfg.Resolver.HostsDirs(),
		Credentials:           remote.DockerConfigCredentials(""),
		Timeout:               cfg.HTTP.RequestTimeoutMsec.Duration(),
		DialTimeout:           cfg.HTTP.DialTimeoutMsec.Duration(),
		ResponseHeaderTimeout: cfg.HTTP.ResponseHeaderTimeoutMsec.Duration(),
		Retry: remote.RetryPolicy{
			MaxRetries: cfg.HTTP.MaxRetries,
			MinWait:    cfg.HTTP.MinWaitMsec.Duration(),
			MaxWait:    cfg.HTTP.MaxWaitMsec.Duration(),
		},
		BlobRetry: remote.RetryPolicy{
			MaxRetries: cfg.Blob.MaxRetries,
			MinWait:    cfg.Blob.MinWaitMsec.Duration(),
			MaxWait:    cfg.Blob.MaxWaitMsec.Duration(),
		},
		Mirrors: map[string][]remote.Mirror{},
		// Registry requests in flight on the node, shared by span reads,
		// read-ahead, background fetch and index/zTOC fetches (0: no bound).
		MaxConcurrency: cfg.MaxConcurrency,
	}
	// [blob] valid_interval: how long a blob storage URL stays trusted
	// after its last successful read; check_always: never.
	opts.DirectURLValidFor = cfg.Blob.ValidIntervalSec.Duration()
	if cfg.Blob.CheckAlways {
		opts.DirectURLValidFor = -1
	}
	// [resolver] auth_client_ttl_sec: credentials re-read and tokens
	// fetched anew this often (negative: never).
	opts.AuthTTL = cfg.Resolver.AuthClientTTLSec.Duration()
	for host, h := range cfg.Resolver.Host {
		for _, m := range h.Mirrors {
			opts.Mirrors[host] = append(opts.Mirrors[host], remote.Mirror{
				Host:           m.Host,
				Insecure:       m.Insecure,
				RequestTimeout: max(m.RequestTimeoutSec.Duration(), 0), // negative: no timeout
			})
			if m.Insecure {
				opts.Insecure = append(opts.Insecure, m.Host)
			}
		}
	}
	return opts
}

// spanFetchTimeout bounds one shared span fetch, and so how long a read from
// a lazily loaded file can wait for a registry that is down before it fails
// with EIO. [blob] fetching_timeout_sec (300 s by default, sized for whole
// layer downloads) may lower it, never raise it above span's default.
func spanFetchTimeout(cfg *config.Config) time.Duration {
	d := span.DefaultFetchTimeout
	if t := cfg.Blob.FetchTimeoutSec.Duration(); t > 0 && t < d {
		d = t
	}
	return d
}

// kubeCredentials starts the [kubeconfig_keychain] when it is enabled:
// registry credentials from the cluster's image pull secrets, synced in the
// background until ctx is done. nil when it is not enabled.
func kubeCredentials(ctx context.Context, cfg *config.Config) func(string) (string, string, error) {
	if !cfg.KubeconfigKeychain.EnableKeychain {
		return nil
	}
	return kubekeychain.Start(ctx, kubekeychain.Options{KubeconfigPath: cfg.KubeconfigKeychain.KubeconfigPath}).Credentials
}
