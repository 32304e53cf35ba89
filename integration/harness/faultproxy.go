package harness

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// FaultProxy is an HTTP reverse proxy on 127.0.0.1 in front of a registry
// that injects faults on command: connection resets, error statuses, and
// outages in which every request's connection is reset.
type FaultProxy struct {
	// Host is "127.0.0.1:PORT", to be used in image refs.
	Host string
	srv  *http.Server
	rp   *httputil.ReverseProxy

	mu       sync.Mutex
	resets   int // reset this many more requests
	fails    int // answer this many more requests with failStatus
	status   int
	down     bool
	injected int
	passed   int
}

// StartFaultProxy proxies to upstream ("host:port", plain HTTP).
func StartFaultProxy(upstream string) (*FaultProxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for fault proxy: %w", err)
	}
	target := &url.URL{Scheme: "http", Host: upstream}
	p := &FaultProxy{Host: l.Addr().String(), rp: httputil.NewSingleHostReverseProxy(target)}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(l) }()
	return p, nil
}

// ResetNext resets the connections of the next n requests.
func (p *FaultProxy) ResetNext(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resets = n
}

// FailNext answers the next n requests with status.
func (p *FaultProxy) FailNext(n, status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fails, p.status = n, status
}

// SetDown starts (true) or ends an outage: every request is reset.
func (p *FaultProxy) SetDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
}

// Counts returns how many requests got a fault and how many were passed on.
func (p *FaultProxy) Counts() (injected, passed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.injected, p.passed
}

func (p *FaultProxy) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	p.mu.Lock()
	var reset, fail bool
	status := p.status
	switch {
	case p.down:
		reset = true
	case p.resets > 0:
		p.resets--
		reset = true
	case p.fails > 0:
		p.fails--
		fail = true
	}
	if reset || fail {
		p.injected++
	} else {
		p.passed++
	}
	p.mu.Unlock()
	switch {
	case reset:
		resetConn(w)
	case fail:
		http.Error(w, http.StatusText(status), status)
	default:
		p.rp.ServeHTTP(w, req)
	}
}

// resetConn closes the request's connection with a TCP RST.
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// Close stops the proxy.
func (p *FaultProxy) Close() error { return p.srv.Close() }

// WriteHtpasswd writes a bcrypt htpasswd file with one user, as the
// registry's htpasswd auth wants.
func WriteHtpasswd(path, user, password string) error {
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return fmt.Errorf("hash password: %w", err)
	}
	return os.WriteFile(path, []byte(user+":"+string(hash)+"\n"), 0o600)
}
