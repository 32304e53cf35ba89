package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// scrape GETs the metrics endpoint and returns the samples by series
// (name{labels}).
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("bad sample line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestMetrics: after a lazily loaded container ran and its layers became
// local in the background, the daemon's metrics endpoint shows every metric
// with a non-zero value.
func TestMetrics(t *testing.T) {
	port := freeTCPPort(t)
	// The default silence period lets the container read before the
	// background fetcher starts, so that there are cache misses.
	cfg := fmt.Sprintf("metrics_address = \"127.0.0.1:%d\"\n", port) + defaultDaemonConfig
	e := startEnv(t, cfg)
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	ref := pushV2(t, e, "metrics/app:latest", buildImage(t, img.spec), sociimage.Options{SpanSize: 1 << 20})
	checkSums(t, runSums(t, ctx, e, ref, img.paths), img.want)
	waitLocal(t, e, 2*time.Minute)

	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	samples := scrape(t, url)
	nonZero := []string{
		`soci_registry_get_duration_seconds_count{kind="range"}`,
		`soci_registry_get_duration_seconds_count{kind="manifest"}`,
		`soci_registry_get_duration_seconds_count{kind="blob"}`,
		`soci_registry_get_bytes_total{kind="range"}`,
		`soci_registry_get_bytes_total{kind="manifest"}`,
		`soci_registry_get_bytes_total{kind="blob"}`,
		`soci_span_cache_hits_total`,
		`soci_span_cache_misses_total`,
		`soci_fuse_read_duration_seconds_count`,
		`soci_background_fetch_bytes_total`,
		`soci_background_layers_completed_total`,
		`soci_mount_duration_seconds_count`,
	}
	for _, name := range nonZero {
		v, ok := samples[name]
		switch {
		case !ok:
			t.Errorf("metric %s missing", name)
		case v <= 0:
			t.Errorf("metric %s = %v, want > 0", name, v)
		default:
			t.Logf("%s = %v", name, v)
		}
	}
	for _, kind := range []string{"verification", "fetch", "mount"} {
		name := fmt.Sprintf(`soci_failures_total{kind=%q}`, kind)
		if v, ok := samples[name]; !ok || v != 0 {
			t.Errorf("metric %s = %v (present %v), want 0 after a clean run", name, v, ok)
		}
	}
	if v := samples["soci_background_layers_completed_total"]; v != 3 {
		t.Errorf("soci_background_layers_completed_total = %v, want 3", v)
	}
}
