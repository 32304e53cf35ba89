package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/containerd/log"

	"github.com/fastsoci/soci-snapshotter/config"
)

// debugServer serves net/http/pprof under /debug/pprof/ on the configured
// debug_address: a unix socket path (mode 0600, see listenUnix), or a
// loopback host:port for TCP. pprof is unauthenticated, so a TCP address
// that is not loopback is refused.
type debugServer struct {
	srv    *http.Server
	served chan struct{} // closed when Serve has returned (and closed the listener)
}

func startDebug(ctx context.Context, addr string) (*debugServer, error) {
	if addr == "" {
		return nil, nil
	}
	if config.DebugNetwork(addr) == config.NetworkTCP {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("debug_address %s: %w", addr, err)
		}
		if err := config.CheckLoopback(addr); err != nil {
			// Upstream serves pprof on any address; we load such a file
			// but never expose the unauthenticated endpoint beyond the node.
			log.G(ctx).WithError(err).WithField("address", addr).Warn("debug_address not served")
			return nil, nil
		}
	}
	l, err := listenDebug(addr)
	if err != nil {
		return nil, err
	}
	d := &debugServer{srv: &http.Server{Handler: pprofHandler(), ReadHeaderTimeout: 10 * time.Second}, served: make(chan struct{})}
	go func() {
		defer close(d.served)
		if err := d.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.G(ctx).WithError(err).Warn("debug server stopped")
		}
	}()
	log.G(ctx).WithField("address", l.Addr().String()).Info("serving pprof under /debug/pprof/")
	return d, nil
}

// pprofHandler serves net/http/pprof under /debug/pprof/.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// listenDebug listens on debug_address: a unix socket, or TCP on a loopback
// address only (checked on the address and again on the bound one, which
// catches a "localhost" that resolves elsewhere).
func listenDebug(addr string) (net.Listener, error) {
	if config.DebugNetwork(addr) == config.NetworkUnix {
		l, err := listenUnix(strings.TrimPrefix(addr, "unix://"))
		if err != nil {
			return nil, fmt.Errorf("debug_address: %w", err)
		}
		return l, nil
	}
	if err := config.CheckLoopback(addr); err != nil {
		return nil, fmt.Errorf("debug_address %s: %w", addr, err)
	}
	l, err := net.Listen(config.NetworkTCP, addr)
	if err != nil {
		return nil, fmt.Errorf("debug_address: listen on %s: %w", addr, err)
	}
	if ta, ok := l.Addr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
		l.Close()
		return nil, fmt.Errorf("debug_address %s: bound to %s, which is not a loopback address", addr, l.Addr())
	}
	return l, nil
}

// close stops the debug server and waits until its listener is closed (a
// unix socket file removed); a nil server is fine.
func (d *debugServer) close() error {
	if d == nil {
		return nil
	}
	err := d.srv.Close()
	<-d.served
	if err != nil {
		return fmt.Errorf("stop debug server: %w", err)
	}
	return nil
}
