package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

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
// socket path when metrics_network is "unix") and serves h at /metrics (and
// /). An empty address, or no handler (no_prometheus), turns the endpoint
// off.
func serveMetrics(ctx context.Context, cfg *config.Config, h http.Handler) (*metricsServer, error) {
	addr := cfg.MetricsAddress
	if addr == "" || h == nil {
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
	mux.Handle("/metrics", h)
	mux.Handle("/", h)
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
func observed(o remote.Options, m *metrics.Metrics, more ...remote.Observer) remote.Options {
	all := more
	if m != nil {
		all = append([]remote.Observer{m}, more...)
	}
	switch len(all) {
	case 0:
	case 1:
		o.Observer = all[0]
	default:
		o.Observer = observers(all)
	}
	return o
}

// observers hands each registry GET to every one of its observers.
type observers []remote.Observer

func (all observers) ObserveGet(kind string, took time.Duration, n int64) {
	for _, o := range all {
		o.ObserveGet(kind, took, n)
	}
}

// ObserveBody hands a body's time to those of its observers that take it.
func (all observers) ObserveBody(kind string, took time.Duration, n int64) {
	for _, o := range all {
		if b, ok := o.(remote.BodyObserver); ok {
			b.ObserveBody(kind, took, n)
		}
	}
}

// hostMetrics is what daemonMetrics needs of the FUSE hosts.
type hostMetrics interface {
	Metrics(ctx context.Context) ([]*dto.MetricFamily, error)
}

// daemonMetrics is the daemon's metrics endpoint, nil with no_prometheus:
// the daemon's own process and Go runtime metrics and extra (parallel
// pull's counters), plus every other series
// of its own FUSE host, which owns the filesystem's and the registry
// client's (fetched from the host on each scrape). A retired host's series
// are not included: after an upgrade they are missing until it exits.
func daemonMetrics(ctx context.Context, cfg *config.Config, hosts hostMetrics, extra ...prometheus.Collector) http.Handler {
	if cfg.NoPrometheus {
		return nil
	}
	own := prometheus.NewRegistry()
	own.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	own.MustRegister(extra...)
	g := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		fams, err := own.Gather()
		names := map[string]bool{}
		for _, f := range fams {
			names[f.GetName()] = true
		}
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		hfams, herr := hosts.Metrics(hctx)
		for _, f := range hfams {
			if !names[f.GetName()] {
				fams = append(fams, f)
			}
		}
		sort.Slice(fams, func(i, j int) bool { return fams[i].GetName() < fams[j].GetName() })
		return fams, errors.Join(err, herr)
	})
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, ErrorLog: errorLog{ctx}})
}

// errorLog writes promhttp's errors (a FUSE host that did not answer a
// scrape) as warnings.
type errorLog struct{ ctx context.Context }

func (l errorLog) Println(v ...any) { log.G(l.ctx).Warn(v...) }
