package fusehost

import (
	"os"
	"sync"
)

// Credentials holds, in memory only, the registry credentials the daemon
// sent with mounts: one user and secret per registry host, the latest
// wins. A nil *Credentials keeps nothing.
type Credentials struct {
	mu    sync.Mutex
	hosts map[string]Credential
}

// NewCredentials returns an empty store.
func NewCredentials() *Credentials {
	return &Credentials{hosts: map[string]Credential{}}
}

// Add records creds (a later call wins).
func (c *Credentials) Add(creds []Credential) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cr := range creds {
		if cr.Host == "" || cr.Username == "" && cr.Secret == "" {
			continue
		}
		cr.Host = HostKey(cr.Host)
		c.hosts[cr.Host] = cr
	}
}

// Lookup is a remote Credentials source: the credentials recorded for
// host, or none.
func (c *Credentials) Lookup(host string) (string, string, error) {
	if c == nil {
		return "", "", nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cr := c.hosts[HostKey(host)]
	return cr.Username, cr.Secret, nil
}

// HostKey names Docker Hub one way, however the caller spells it; other
// hosts are kept as they are.
func HostKey(host string) string {
	switch host {
	case "docker.io", "index.docker.io", "registry-1.docker.io":
		return "docker.io"
	}
	return host
}

// pid is the process's id (a variable of the package's, not the test's).
var pid = os.Getpid
