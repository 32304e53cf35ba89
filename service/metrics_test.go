package service

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/fs/linkrate"
	"github.com/fastsoci/soci-snapshotter/fs/remote"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

func TestServeMetricsUnix(t *testing.T) {
	cfg := config.Default()
	cfg.MetricsNetwork = config.NetworkUnix
	cfg.MetricsAddress = filepath.Join(t.TempDir(), "run", "metrics.sock")
	m := metrics.New()
	m.ObserveMount(time.Millisecond)
	s, err := serveMetrics(context.Background(), cfg, m.Handler())
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", cfg.MetricsAddress)
		},
	}}
	resp, err := client.Get("http://soci/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "soci_mount_duration_seconds_count 1") {
		t.Errorf("metrics lack the mount observed:\n%.2000s", body)
	}
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	// A restart finds the stale socket and replaces it.
	s, err = serveMetrics(context.Background(), cfg, m.Handler())
	if err != nil {
		t.Fatalf("serve again: %v", err)
	}
	s.close()
}

func TestServeMetricsOff(t *testing.T) {
	s, err := serveMetrics(context.Background(), config.Default(), metrics.New().Handler())
	if s != nil || err != nil {
		t.Fatalf("empty metrics_address: %v, %v", s, err)
	}
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
}

func TestBackgroundOptions(t *testing.T) {
	cfg := config.Default()
	link := &linkrate.Meter{}
	o := backgroundOptions(cfg, link)
	if o == nil || o.Delay != 0 || o.RetryWait != maxBackgroundRetryWait || o.MaxQueue != 300 || o.DropOldest {
		t.Errorf("defaults: %+v", o)
	}
	// The link is fast once a transfer beat background_fast_link_mbit
	// (300 by default): 8 MiB in 100 ms is about 671 Mbit/s.
	if o.FastLink == nil || o.FastLink() {
		t.Errorf("defaults: fast link before any transfer")
	}
	link.Observe(8<<20, 100*time.Millisecond)
	if !o.FastLink() {
		t.Errorf("defaults: not a fast link after a transfer at 671 Mbit/s")
	}
	cfg.Limits.BackgroundFastLinkMbit = 1000
	if o := backgroundOptions(cfg, link); o.FastLink() {
		t.Errorf("fast link at 671 Mbit/s with background_fast_link_mbit = 1000")
	}
	cfg.Limits.BackgroundFastLinkMbit = 0
	if o := backgroundOptions(cfg, link); o.FastLink != nil {
		t.Errorf("background_fast_link_mbit = 0 still measures the link")
	}
	cfg.BackgroundFetch.SilencePeriodMsec = 200
	cfg.Limits.BackgroundMaxDelayMsec = 5000
	cfg.BackgroundFetch.MaxQueueSize = -1
	cfg.BackgroundFetch.DropPolicy = config.DropOldest
	if o := backgroundOptions(cfg, link); o.Delay != 200*time.Millisecond || o.MaxQueue != 0 || !o.DropOldest {
		t.Errorf("set: %+v", o)
	}
	cfg.BackgroundFetch.Disable = true
	if o := backgroundOptions(cfg, link); o != nil {
		t.Errorf("disabled: %+v", o)
	}
}

func TestObservedHandsGetsToAll(t *testing.T) {
	link := &linkrate.Meter{}
	if o := observed(remote.Options{}, nil, link); o.Observer != link {
		t.Errorf("without metrics the link meter alone should observe, got %T", o.Observer)
	}
	if o := observed(remote.Options{}, nil); o.Observer != nil {
		t.Errorf("nothing to observe, got %T", o.Observer)
	}
	m := metrics.New()
	o := observed(remote.Options{}, m, link)
	o.Observer.ObserveGet(remote.KindRange, time.Second, 2<<20)
	o.Observer.(remote.BodyObserver).ObserveBody(remote.KindRange, time.Second, 2<<20)
	if r, ok := link.Rate(); !ok || r != 2<<20 {
		t.Errorf("link meter: rate %v, %v after one 2 MiB/s transfer", r, ok)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if want := `soci_registry_get_bytes_total{kind="range"} 2.097152e+06`; !strings.Contains(rec.Body.String(), want) {
		t.Errorf("metrics lack %s:\n%s", want, rec.Body)
	}
}
