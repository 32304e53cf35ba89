package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/containerd/log"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/fs/remote"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

// metricsServer serves the Prometheus registry over HTTP on
// metrics_address. A nil *metricsServer is off.
type metricsServer struct {
	srv    *http.Server
	served chan error
}

// serveMetrics listens on cfg.MetricsAddress (tcp "host:port", or a unix
// socket path when metrics_network is "unix") and serves m's registry at
// /metrics (and /). An empty address, or no metrics (m nil: no_prometheus),
// turns the endpoint off.
func serveMetrics(ctx context.Context, cfg *config.Config, m *metrics.Metrics) (*metricsServer, error) {
	addr := cfg.MetricsAddress
	if addr == "" || m == nil {
		return nil, nil
	}
	network := cfg.MetricsNetwork
	if network == "" {
		network = config.NetworkTCP
	}
	var l net.Listener
	var err error
	if network == config.NetworkUnix {
		// Mode 0600 from the moment the socket exists (see listenUnix).
		l, err = listenUnix(addr)
	} else {
		// Unauthenticated: Prometheus scrapes it; the README says so.
		l, err = net.Listen(network, addr)
	}
	if err != nil {
		return nil, fmt.Errorf("listen for metrics on %s %s: %w", network, addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	mux.Handle("/", m.Handler())
	s := &metricsServer{
		srv:    &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		served: make(chan error, 1),
	}
	go func() { s.served <- s.srv.Serve(l) }()
	log.G(ctx).WithField("address", l.Addr().String()).WithField("network", network).Info("serving Prometheus metrics")
	return s, nil
}

// close stops the metrics endpoint (and removes a unix socket file).
func (s *metricsServer) close() error {
	if s == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if serr := <-s.served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return fmt.Errorf("stop metrics endpoint: %w", err)
	}
	return nil
}

// observed sets m as the registry client's observer (none when m is nil).
func observed(o remote.Options, m *metrics.Metrics) remote.Options {
	if m != nil {
		o.Observer = m
	}
	return o
}
