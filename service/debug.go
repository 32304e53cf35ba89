package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"github.com/containerd/log"
)

// debugServer serves net/http/pprof under /debug/pprof/ on the configured
// debug_address: a unix socket path, or host:port for TCP.
type debugServer struct {
	srv *http.Server
	l   net.Listener
}

func startDebug(ctx context.Context, addr string) (*debugServer, error) {
	if addr == "" {
		return nil, nil
	}
	network := "tcp"
	if strings.Contains(addr, "/") {
		network = "unix"
		if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale debug socket %s: %w", addr, err)
		}
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on debug address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	d := &debugServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, l: l}
	go func() {
		if err := d.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.G(ctx).WithError(err).Warn("debug server stopped")
		}
	}()
	log.G(ctx).WithField("address", addr).Info("serving pprof under /debug/pprof/")
	return d, nil
}

// close stops the debug server; a nil server is fine.
func (d *debugServer) close() error {
	if d == nil {
		return nil
	}
	if err := d.srv.Close(); err != nil {
		return fmt.Errorf("stop debug server: %w", err)
	}
	return nil
}
