package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Registry is a distribution registry serving plain HTTP on 127.0.0.1.
type Registry struct {
	// Host is "127.0.0.1:PORT".
	Host string
	// Storage is the registry's filesystem storage root.
	Storage string
	proc    *Process
}

const registryConfig = `version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
%s`

// StartRegistry starts the registry binary with its state under dir.
func StartRegistry(ctx context.Context, bin, dir string) (*Registry, error) {
	return StartRegistryWith(ctx, bin, dir, RegistryOptions{})
}

// RegistryOptions vary a registry: shared storage, authentication.
type RegistryOptions struct {
	// Storage is the storage root; "" for dir/storage. Two registries on
	// one root serve the same content (a mirror, an authenticated front).
	Storage string
	// Htpasswd is a bcrypt htpasswd file; when set every request needs
	// basic auth (realm "soci-test").
	Htpasswd string
	// ProxyRemote ("http://host:port") makes the registry a pull-through
	// cache of that registry (distribution's proxy mode).
	ProxyRemote string
}

// StartRegistryWith starts the registry binary with its state under dir.
func StartRegistryWith(ctx context.Context, bin, dir string, opts RegistryOptions) (*Registry, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	host := fmt.Sprintf("127.0.0.1:%d", port)
	storage := opts.Storage
	if storage == "" {
		storage = filepath.Join(dir, "storage")
	}
	extra := ""
	if opts.Htpasswd != "" {
		extra = fmt.Sprintf("auth:\n  htpasswd:\n    realm: soci-test\n    path: %s\n", opts.Htpasswd)
	}
	if opts.ProxyRemote != "" {
		extra += fmt.Sprintf("proxy:\n  remoteurl: %s\n", opts.ProxyRemote)
	}
	cfg := filepath.Join(dir, "config.yml")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, fmt.Errorf("create registry storage: %w", err)
	}
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(registryConfig, storage, host, extra)), 0o644); err != nil {
		return nil, fmt.Errorf("write registry config: %w", err)
	}
	env := []string{"OTEL_TRACES_EXPORTER=none", "OTEL_SDK_DISABLED=true"}
	p, err := StartProcess("registry", filepath.Join(dir, "registry.log"), env, bin, "serve", cfg)
	if err != nil {
		return nil, err
	}
	r := &Registry{Host: host, Storage: storage, proc: p}
	client := &http.Client{Timeout: time.Second}
	err = waitFor(ctx, p, 20*time.Second, func() error {
		resp, err := client.Get("http://" + host + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && !(opts.Htpasswd != "" && resp.StatusCode == http.StatusUnauthorized) {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		p.Stop(time.Second)
		return nil, fmt.Errorf("start registry: %w", err)
	}
	return r, nil
}

// Stop stops the registry.
func (r *Registry) Stop() error {
	return stoppedBySignal(r.proc.Stop(5 * time.Second))
}

// Log is the path of the registry's log (it includes the access log).
func (r *Registry) Log() string { return r.proc.LogPath }

// Pid is the registry's process id.
func (r *Registry) Pid() int { return r.proc.Pid() }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
