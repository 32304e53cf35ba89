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
	// The walk held back: the demand reads' series must see misses.
	cfg := fmt.Sprintf("metrics_address = \"127.0.0.1:%d\"\n", port) + defaultDaemonConfig + walkLaterConfig
	e := startEnv(t, cfg)
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	built := buildImage(t, img.spec)
	ref := pushV2(t, e, "metrics/app:latest", built, sociimage.Options{SpanSize: 1 << 20})
	checkSums(t, runSums(t, ctx, e, ref, img.paths), img.want)
	waitLocal(t, e, built.LayerDescs, 2*time.Minute)

	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	// The verified marker is written just before the layer is counted.
	samples := waitMetric(t, url, "soci_background_layers_completed_total", float64(len(built.LayerDescs)), 10*time.Second)
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

// referenceSeries are the reference snapshotter's series the daemon serves
// (README, metrics section): the sample name (histograms by their _count)
// and operation_type, and whether a lazy run with a background fetch makes
// it move (moves: > 0), leaves it at 0 (zero: failures, of which a clean
// run has none, and the queue after it drained), or may do either (any).
const (
	seriesMoves = iota
	seriesZero
	seriesAny
)

var referenceSeries = []struct {
	name, op string
	want     int
}{
	{"soci_fs_operation_duration_milliseconds_count", "mount", seriesMoves},
	{"soci_fs_operation_duration_milliseconds_count", "remote_registry_get", seriesMoves},
	{"soci_fs_operation_duration_milliseconds_count", "init_metadata_store", seriesMoves},
	{"soci_fs_operation_duration_milliseconds_count", "background_fetch", seriesMoves},
	{"soci_fs_operation_duration_milliseconds_count", "ztoc_unmarshal", seriesMoves},
	{"soci_fs_operation_duration_milliseconds_count", "fuse_mount", seriesMoves},
	{"soci_fs_operation_duration_milliseconds_count", "soci_index_fetch", seriesMoves},
	{"soci_fs_operation_duration_microseconds_count", "synchronous_read", seriesMoves},
	{"soci_fs_operation_duration_microseconds_count", "node_readdir", seriesMoves},
	{"soci_fs_operation_count", "synchronous_read_count", seriesMoves},
	{"soci_fs_operation_count", "synchronous_read_remote_registry_fetch_count", seriesMoves},
	{"soci_fs_operation_count", "background_span_fetch_count", seriesMoves},
	{"soci_fs_operation_count", "background_span_fetch_failure_count", seriesZero},
	{"soci_fs_operation_count", "background_fetch_work_queue_evicted", seriesZero},
	{"soci_fs_operation_count", "fuse_mount_failure_count", seriesZero},
	{"soci_fs_operation_count", "local_mount_failure_count", seriesZero},
	{"soci_fs_operation_count", "fuse_failure_state", seriesZero},
	{"soci_fs_operation_count", "fuse_node_getattr_failure_count", seriesZero},
	{"soci_fs_operation_count", "fuse_node_listxattr_failure_count", seriesZero},
	{"soci_fs_operation_count", "fuse_node_lookup_failure_count", seriesZero},
	{"soci_fs_operation_count", "fuse_node_open_failure_count", seriesZero},
	{"soci_fs_operation_count", "fuse_node_readdir_failure_count", seriesZero},
	{"soci_fs_operation_count", "fuse_file_read_failure_count", seriesZero},
	{"soci_fs_operation_count", "fuse_file_getattr_failure_count", seriesZero},
	{"soci_fs_operation_count", "fuse_whiteout_getattr_failure_count", seriesZero},
	{"soci_fs_operation_count", "fuse_unknown_operation_failure_count", seriesZero},
	{"soci_fs_bytes_served", "synchronous_bytes_served", seriesMoves},
	{"soci_fs_image_operation_count_key", "file.Read", seriesMoves},
	{"soci_fs_image_operation_count_key", "node.Lookup", seriesMoves},
	{"soci_fs_image_operation_count_key", "node.Open", seriesMoves},
	{"soci_fs_image_operation_count_key", "node.Readdir", seriesMoves},
	{"soci_fs_image_operation_count_key", "node.Getattr", seriesAny},
	{"soci_fs_image_operation_count_key", "node.Getxattr", seriesAny},
	{"soci_fs_image_operation_count_key", "node.Listxattr", seriesAny},
	{"soci_fs_image_operation_count_key", "node.Readlink", seriesAny},
	{"soci_fs_image_operation_count_key", "file.Getattr", seriesAny},
	{"soci_fs_image_operation_count_key", "whiteout.Getattr", seriesAny},
	{"soci_fs_image_operation_count_key", "background_fetch_work_queue_size", seriesZero},
	{"soci_fs_layer_fetched_size_bytes", "", seriesMoves},
	{"soci_fs_layer_size_bytes", "", seriesMoves},
}

// TestMetricsReference: after a lazily loaded container ran (reads and a
// directory walk) and its layers became local in the background, every
// series of the reference snapshotter is served with its labels, and the
// ones such a run feeds have moved.
func TestMetricsReference(t *testing.T) {
	port := freeTCPPort(t)
	// The walk held back: the demand reads' series must see misses.
	cfg := fmt.Sprintf("metrics_address = \"127.0.0.1:%d\"\n", port) + defaultDaemonConfig + walkLaterConfig
	e := startEnv(t, cfg)
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	built := buildImage(t, img.spec)
	ref := pushV2(t, e, "metrics/ref:latest", built, sociimage.Options{SpanSize: 1 << 20})
	// The big file (several spans of the middle layer) is left to the
	// background fetch, so that it has spans to fetch.
	const big = "/data/b.bin"
	want := map[string]string{}
	var paths []string
	for _, p := range img.paths {
		if p != big {
			paths = append(paths, p)
			want[p] = img.want[p]
		}
	}
	checkSums(t, runSums(t, ctx, e, ref, paths), want)
	if _, err := e.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", ref, "walk", "/data", big); err != nil {
		t.Fatal(err)
	}
	waitLocal(t, e, built.LayerDescs, 2*time.Minute)
	layers := len(built.LayerDescs)

	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	// The verified marker is written just before the layer is counted.
	samples := waitMetric(t, url, "soci_background_layers_completed_total", float64(layers), 10*time.Second)
	for _, s := range referenceSeries {
		var sum float64
		var found []string
		for series, v := range samples {
			name, labels, _ := strings.Cut(series, "{")
			if name != s.name || (s.op != "" && !strings.Contains(labels, fmt.Sprintf("operation_type=%q", s.op))) {
				continue
			}
			for _, want := range seriesLabels(s.name) {
				if !strings.Contains(labels, want+"=") {
					t.Errorf("%s lacks label %s", series, want)
				}
			}
			sum += v
			found = append(found, series)
		}
		switch {
		case len(found) == 0:
			t.Errorf("%s{operation_type=%q} missing", s.name, s.op)
		case s.want == seriesMoves && sum <= 0:
			t.Errorf("%s{operation_type=%q} = %v, want > 0", s.name, s.op, sum)
		case s.want == seriesZero && sum != 0:
			t.Errorf("%s{operation_type=%q} = %v after a clean, drained run, want 0", s.name, s.op, sum)
		default:
			t.Logf("%s{operation_type=%q} = %v (%d series)", s.name, s.op, sum, len(found))
		}
	}
	// Per layer: each lazily mounted layer has its mount timed, and its
	// size served; the image's index is timed once.
	count := func(name, op string) int {
		n := 0
		for series := range samples {
			if strings.HasPrefix(series, name+"{") && strings.Contains(series, fmt.Sprintf("operation_type=%q", op)) {
				n++
			}
		}
		return n
	}
	if n := count("soci_fs_operation_duration_milliseconds_count", "mount"); n != layers {
		t.Errorf("mount timed for %d layers, want %d", n, layers)
	}
	if n := count("soci_fs_operation_duration_milliseconds_count", "soci_index_fetch"); n != 1 {
		t.Errorf("soci_index_fetch for %d indices, want 1", n)
	}
	var fetched, size float64
	for series, v := range samples {
		switch {
		case strings.HasPrefix(series, "soci_fs_layer_fetched_size_bytes{"):
			fetched += v
		case strings.HasPrefix(series, "soci_fs_layer_size_bytes{"):
			size += v
		}
	}
	// Fully local: every byte of each blob was fetched at least once.
	if fetched < size {
		t.Errorf("layers fetched %v bytes of %v after the background fetch", fetched, size)
	}
}

// seriesLabels are the label names the reference gives a series.
func seriesLabels(name string) []string {
	switch {
	case strings.HasPrefix(name, "soci_fs_layer_"):
		return []string{"digest", "mountpoint"}
	case name == "soci_fs_image_operation_count_key":
		return []string{"operation_type", "image"}
	}
	return []string{"operation_type", "layer"}
}
