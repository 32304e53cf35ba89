package service

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/config"
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
	o := backgroundOptions(cfg)
	if o == nil || o.Delay != 0 || o.RetryWait != maxBackgroundRetryWait || o.MaxQueue != 300 || o.DropOldest {
		t.Errorf("defaults: %+v", o)
	}
	cfg.BackgroundFetch.SilencePeriodMsec = 200
	cfg.Limits.BackgroundMaxDelayMsec = 5000
	cfg.BackgroundFetch.MaxQueueSize = -1
	cfg.BackgroundFetch.DropPolicy = config.DropOldest
	if o := backgroundOptions(cfg); o.Delay != 200*time.Millisecond || o.MaxQueue != 0 || !o.DropOldest {
		t.Errorf("set: %+v", o)
	}
	cfg.BackgroundFetch.Disable = true
	if o := backgroundOptions(cfg); o != nil {
		t.Errorf("disabled: %+v", o)
	}
}
