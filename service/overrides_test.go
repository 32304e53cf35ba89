package service

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"

	"github.com/fastsoci/soci-snapshotter/config"
)

func captureLog(buf *bytes.Buffer) context.Context {
	l := logrus.New()
	l.SetOutput(buf)
	l.SetLevel(logrus.InfoLevel)
	return log.WithLogger(context.Background(), logrus.NewEntry(l))
}

// TestNoPrometheus: no_prometheus = true collects no metrics and serves
// none, even with a metrics_address (as upstream); without it both happen.
func TestNoPrometheus(t *testing.T) {
	cfg := config.Default()
	cfg.MetricsNetwork = config.NetworkUnix
	cfg.MetricsAddress = filepath.Join(t.TempDir(), "metrics.sock")
	cfg.NoPrometheus = true
	var buf bytes.Buffer
	m := newMetrics(captureLog(&buf), cfg)
	if m != nil {
		t.Fatal("no_prometheus: metrics are collected")
	}
	if !strings.Contains(buf.String(), "no_prometheus") || !strings.Contains(buf.String(), cfg.MetricsAddress) {
		t.Errorf("no Info line about no_prometheus naming the address: %q", buf.String())
	}
	s, err := serveMetrics(context.Background(), cfg, daemonMetrics(context.Background(), cfg, nil))
	if s != nil || err != nil {
		t.Fatalf("no_prometheus: metrics served (%v, %v)", s, err)
	}
	if c, err := net.Dial("unix", cfg.MetricsAddress); err == nil {
		c.Close()
		t.Error("no_prometheus: something listens on metrics_address")
	}
	if o := fsOptions(cfg, t.TempDir(), m, nil); o.Metrics != nil {
		t.Error("no_prometheus: the lazy filesystem has metrics")
	}

	cfg.NoPrometheus = false
	m = newMetrics(context.Background(), cfg)
	if m == nil {
		t.Fatal("metrics off without no_prometheus")
	}
	s, err = serveMetrics(context.Background(), cfg, m.Handler())
	if err != nil || s == nil {
		t.Fatalf("metrics not served: %v", err)
	}
	defer s.close()
	c, err := net.Dial("unix", cfg.MetricsAddress)
	if err != nil {
		t.Fatalf("metrics_address does not answer: %v", err)
	}
	c.Close()
}

// TestDisableVerificationWarns: disable_verification = true gets one
// warning saying spans stay verified; false gets none.
func TestDisableVerificationWarns(t *testing.T) {
	cfg := config.Default()
	var buf bytes.Buffer
	warnOverrides(captureLog(&buf), cfg)
	if buf.Len() != 0 {
		t.Errorf("disable_verification = false: %q", buf.String())
	}
	cfg.DisableVerification = true
	warnOverrides(captureLog(&buf), cfg)
	out := strings.TrimSpace(buf.String())
	if strings.Count(out, "\n") != 0 || !strings.Contains(out, "level=warning") ||
		!strings.Contains(out, "key=disable_verification") || !strings.Contains(out, "still verified") {
		t.Errorf("want one warning saying spans stay verified, got %q", out)
	}
}
