package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestMetricsExposed(t *testing.T) {
	m := New()
	m.ObserveGet(KindRange, 20*time.Millisecond, 4096)
	m.ObserveRead(time.Millisecond, 2, 1)
	m.Failure(FailureVerification)
	m.ObserveMount(3 * time.Millisecond)
	m.BackgroundBytes(100)
	m.LayerCompleted()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`soci_registry_get_duration_seconds_count{kind="range"} 1`,
		`soci_registry_get_bytes_total{kind="range"} 4096`,
		`soci_registry_get_bytes_total{kind="manifest"} 0`,
		`soci_span_cache_hits_total 2`,
		`soci_span_cache_misses_total 1`,
		`soci_fuse_read_duration_seconds_count 1`,
		`soci_failures_total{kind="verification"} 1`,
		`soci_failures_total{kind="mount"} 0`,
		`soci_mount_duration_seconds_count 1`,
		`soci_background_fetch_bytes_total 100`,
		`soci_background_layers_completed_total 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("exposition lacks %q", want)
		}
	}
}

func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.ObserveGet(KindBlob, time.Second, 1)
	m.ObserveRead(time.Second, 1, 1)
	m.Failure(FailureFetch)
	m.ObserveMount(time.Second)
	m.BackgroundBytes(1)
	m.LayerCompleted()
}

// Two services in one process (tests) have independent registries.
func TestIndependentRegistries(t *testing.T) {
	a, b := New(), New()
	a.LayerCompleted()
	if a.Registry() == b.Registry() {
		t.Fatal("shared registry")
	}
}
