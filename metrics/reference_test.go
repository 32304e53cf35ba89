package metrics

import (
	"fmt"
	"io"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// sample finds the metric family name's sample whose labels are exactly
// labels (name=value pairs).
func sample(t *testing.T, m *Metrics, name string, labels ...string) (*dto.Metric, dto.MetricType, bool) {
	t.Helper()
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, s := range f.GetMetric() {
			if len(s.GetLabel())*2 != len(labels) {
				continue
			}
			for i, l := range s.GetLabel() {
				if l.GetName() != labels[2*i] || l.GetValue() != labels[2*i+1] {
					continue next
				}
			}
			return s, f.GetType(), true
		}
	}
	return nil, 0, false
}

func value(t *testing.T, m *Metrics, name string, labels ...string) float64 {
	t.Helper()
	s, typ, ok := sample(t, m, name, labels...)
	if !ok {
		t.Fatalf("no sample %s%v", name, labels)
	}
	switch typ {
	case dto.MetricType_COUNTER:
		return s.GetCounter().GetValue()
	case dto.MetricType_GAUGE:
		return s.GetGauge().GetValue()
	case dto.MetricType_HISTOGRAM:
		return float64(s.GetHistogram().GetSampleCount())
	}
	t.Fatalf("%s: type %v", name, typ)
	return 0
}

const (
	lay = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	img = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

// The reference's names, types, units (buckets) and label names.
func TestReferenceSeriesShape(t *testing.T) {
	m := New()
	h := m.Layer(lay, "/mnt/a", img, 1000)
	h.FUSE(FUSEFileRead, 3*time.Microsecond, false, 10)
	h.RegistryFetch(5*time.Millisecond, 10)
	want := map[string]struct {
		typ     dto.MetricType
		labels  []string
		buckets []float64
	}{
		RefOperationDurationMs: {dto.MetricType_HISTOGRAM, []string{"layer", "operation_type"},
			[]float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384}},
		RefOperationDurationUs: {dto.MetricType_HISTOGRAM, []string{"layer", "operation_type"},
			[]float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}},
		RefOperationCount:      {dto.MetricType_COUNTER, []string{"layer", "operation_type"}, nil},
		RefBytesServed:         {dto.MetricType_GAUGE, []string{"layer", "operation_type"}, nil},
		RefImageOperationCount: {dto.MetricType_GAUGE, []string{"image", "operation_type"}, nil},
		RefLayerFetchedSize:    {dto.MetricType_COUNTER, []string{"digest", "mountpoint"}, nil},
		RefLayerSize:           {dto.MetricType_COUNTER, []string{"digest", "mountpoint"}, nil},
	}
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range fams {
		w, ok := want[f.GetName()]
		if !ok {
			continue
		}
		seen[f.GetName()] = true
		if f.GetType() != w.typ {
			t.Errorf("%s: type %v, want %v", f.GetName(), f.GetType(), w.typ)
		}
		for _, s := range f.GetMetric() {
			var names []string
			for _, l := range s.GetLabel() {
				names = append(names, l.GetName())
			}
			if !slices.Equal(names, w.labels) {
				t.Errorf("%s: labels %v, want %v", f.GetName(), names, w.labels)
			}
			if w.buckets != nil {
				var got []float64
				for _, b := range s.GetHistogram().GetBucket() {
					got = append(got, b.GetUpperBound())
				}
				if !slices.Equal(got, w.buckets) {
					t.Errorf("%s: buckets %v, want %v", f.GetName(), got, w.buckets)
				}
			}
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("series %s not served", name)
		}
	}
}

func TestLayerHandle(t *testing.T) {
	m := New()
	h := m.Layer(lay, "/mnt/a", img, 1000)
	h.FUSE(FUSEFileRead, 3*time.Microsecond, false, 4096)
	h.FUSE(FUSEFileRead, 2*time.Millisecond, false, 100) // above the last µs bucket
	h.FUSE(FUSENodeReaddir, time.Microsecond, false, 0)
	h.FUSE(FUSENodeLookup, time.Microsecond, false, 0)
	h.RegistryFetch(20*time.Millisecond, 300)
	h.RegistryFetch(time.Millisecond, 0) // a failed fetch: timed, no bytes
	h.ObserveRead(time.Millisecond, 1, 2)
	h.BackgroundChunk(3, false)
	h.BackgroundChunk(0, true)

	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{RefOperationDurationUs, []string{"layer", lay, "operation_type", OpSynchronousRead}, 2},
		{RefOperationDurationUs, []string{"layer", lay, "operation_type", OpNodeReaddir}, 1},
		{RefOperationCount, []string{"layer", lay, "operation_type", OpSynchronousReadCount}, 2},
		{RefBytesServed, []string{"layer", lay, "operation_type", OpSynchronousBytesServed}, 4196},
		{RefImageOperationCount, []string{"image", img, "operation_type", "file.Read"}, 2},
		{RefImageOperationCount, []string{"image", img, "operation_type", "node.Lookup"}, 1},
		{RefImageOperationCount, []string{"image", img, "operation_type", "node.Getattr"}, 0},
		{RefOperationDurationMs, []string{"layer", lay, "operation_type", OpRemoteRegistryGet}, 2},
		{RefOperationCount, []string{"layer", lay, "operation_type", OpSynchronousReadRegistryFetchCount}, 2},
		{RefOperationCount, []string{"layer", lay, "operation_type", OpBackgroundSpanFetchCount}, 3},
		{RefOperationCount, []string{"layer", lay, "operation_type", OpBackgroundSpanFetchFailureCount}, 1},
		{RefLayerFetchedSize, []string{"digest", lay, "mountpoint", "/mnt/a"}, 300},
		{RefLayerSize, []string{"digest", lay, "mountpoint", "/mnt/a"}, 1000},
		// ours, through the handle
		{"soci_span_cache_hits_total", nil, 1},
		{"soci_span_cache_misses_total", nil, 2},
	} {
		if got := value(t, m, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	s, _, _ := sample(t, m, RefOperationDurationUs, "layer", lay, "operation_type", OpSynchronousRead)
	if got := s.GetHistogram().GetSampleSum(); got != 2003 {
		t.Errorf("read duration sum %v µs, want 2003", got)
	}
	s, _, _ = sample(t, m, RefOperationDurationMs, "layer", lay, "operation_type", OpRemoteRegistryGet)
	if got := s.GetHistogram().GetSampleSum(); got != 21 {
		t.Errorf("registry get duration sum %v ms, want 21", got)
	}

	// A second mount at the same mountpoint replaces the first; closing
	// the replaced handle leaves the new one served.
	h2 := m.Layer(lay, "/mnt/a", img, 2000)
	h.Close()
	if got := value(t, m, RefLayerSize, "digest", lay, "mountpoint", "/mnt/a"); got != 2000 {
		t.Errorf("layer size after replacement = %v, want 2000", got)
	}
	h2.Close()
	if _, _, ok := sample(t, m, RefLayerSize, "digest", lay, "mountpoint", "/mnt/a"); ok {
		t.Error("layer size still served after unmount")
	}
}

func TestFUSEFailures(t *testing.T) {
	m := New()
	now := time.Unix(1000, 0)
	m.ref.now = func() time.Time { return now }
	h := m.Layer(lay, "/mnt/a", img, 1)
	state := func() float64 {
		return value(t, m, RefOperationCount, "layer", "", "operation_type", OpFuseFailureState)
	}
	if state() != 0 || value(t, m, RefOperationCount, "layer", "", "operation_type", "fuse_file_read_failure_count") != 0 {
		t.Fatal("failure series not present at 0")
	}
	h.FUSE(FUSEFileRead, time.Microsecond, true, 0)
	h.FUSE(FUSEFileRead, time.Microsecond, true, 0)
	h.FUSE(FUSENodeReadlink, time.Microsecond, true, 0) // no failure series of its own
	if got := value(t, m, RefOperationCount, "layer", lay, "operation_type", "fuse_file_read_failure_count"); got != 2 {
		t.Errorf("read failures = %v, want 2", got)
	}
	if got := value(t, m, RefOperationCount, "layer", lay, "operation_type", OpFuseUnknownFailureCount); got != 1 {
		t.Errorf("unknown failures = %v, want 1", got)
	}
	if got := state(); got != 1 {
		t.Errorf("fuse_failure_state = %v after failures in one block, want 1", got)
	}
	now = now.Add(fuseFailureBlock - time.Second)
	h.FUSE(FUSEFileRead, time.Microsecond, true, 0)
	if got := state(); got != 1 {
		t.Errorf("fuse_failure_state = %v inside the block, want 1", got)
	}
	now = now.Add(time.Second)
	h.FUSE(FUSEFileRead, time.Microsecond, true, 0)
	if got := state(); got != 2 {
		t.Errorf("fuse_failure_state = %v in the next block, want 2", got)
	}
}

func TestReferenceNodeWide(t *testing.T) {
	m := New()
	for _, op := range []string{OpFuseMountFailureCount, OpLocalMountFailureCount} {
		if got := value(t, m, RefOperationCount, "layer", "", "operation_type", op); got != 0 {
			t.Errorf("%s = %v before any failure, want 0 (present)", op, got)
		}
	}
	m.Failure(FailureMount)
	m.Failure(FailureFetch)
	for _, op := range []string{OpFuseMountFailureCount, OpLocalMountFailureCount} {
		if got := value(t, m, RefOperationCount, "layer", "", "operation_type", op); got != 1 {
			t.Errorf("%s = %v, want 1 (one failed lazy mount, handed to containerd)", op, got)
		}
	}
	m.QueueFull()
	if got := value(t, m, RefOperationCount, "layer", "", "operation_type", OpBackgroundFetchWorkQueueEvicted); got != 1 {
		t.Errorf("queue evicted = %v, want 1", got)
	}
	queue := 7
	m.SetBackgroundQueue(func() int { return queue })
	if got := value(t, m, RefImageOperationCount, "image", "", "operation_type", OpBackgroundFetchWorkQueueSize); got != 7 {
		t.Errorf("queue size = %v, want 7", got)
	}
	queue = 0
	if got := value(t, m, RefImageOperationCount, "image", "", "operation_type", OpBackgroundFetchWorkQueueSize); got != 0 {
		t.Errorf("queue size = %v, want 0 (a gauge, not a sum)", got)
	}
	m.LayerFetched(lay, 3*time.Second)
	if got := value(t, m, RefOperationDurationMs, "layer", lay, "operation_type", OpBackgroundFetch); got != 1 {
		t.Errorf("background_fetch count = %v, want 1", got)
	}
	m.ObserveOperation(OpMount, lay, 40*time.Millisecond)
	s, _, _ := sample(t, m, RefOperationDurationMs, "layer", lay, "operation_type", OpMount)
	if s.GetHistogram().GetSampleSum() != 40 {
		t.Errorf("mount sum %v, want 40 ms", s.GetHistogram().GetSampleSum())
	}
}

// The index lookup is timed once per index: later lookups hit memory.
func TestIndexFetchOnce(t *testing.T) {
	m := New()
	m.ObserveIndexFetch(img, 100*time.Millisecond)
	m.ObserveIndexFetch(img, time.Microsecond)
	m.ObserveIndexFetch("", time.Second)
	if got := value(t, m, RefOperationDurationMs, "layer", img, "operation_type", OpSociIndexFetch); got != 1 {
		t.Errorf("soci_index_fetch count = %v, want 1", got)
	}
	for i := range maxIndexSeen + 1 { // the set stays bounded
		m.ObserveIndexFetch(fmt.Sprint("index-", i), 0)
	}
	if n := len(m.ref.indexSeen); n > maxIndexSeen {
		t.Errorf("%d index digests remembered, bound %d", n, maxIndexSeen)
	}
}

func TestReferenceNil(t *testing.T) {
	var m *Metrics
	m.ObserveOperation(OpMount, lay, time.Second)
	m.ObserveIndexFetch(img, time.Second)
	m.LayerFetched(lay, time.Second)
	m.QueueFull()
	m.SetBackgroundQueue(func() int { return 1 })
	h := m.Layer(lay, "/mnt", img, 1)
	if h != nil {
		t.Fatal("nil metrics gave a handle")
	}
	h.FUSE(FUSEFileRead, time.Second, true, 1)
	h.RegistryFetch(time.Second, 1)
	h.BackgroundChunk(1, false)
	h.ObserveRead(time.Second, 1, 1)
	h.Failure(FailureFetch)
	h.Close()
	if FUSEOp(-1).String() != "unknown" || FUSEFileRead.String() != "file.Read" {
		t.Error("FUSEOp names")
	}
}

// The exposition text carries the reference's exact series lines.
func TestReferenceExposition(t *testing.T) {
	m := New()
	m.Layer(lay, "/mnt/a", img, 5).FUSE(FUSEFileRead, time.Microsecond, false, 9)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, err := io.ReadAll(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"# TYPE soci_fs_operation_duration_microseconds histogram",
		`soci_fs_operation_duration_microseconds_bucket{layer="` + lay + `",operation_type="synchronous_read",le="1"} 1`,
		`soci_fs_bytes_served{layer="` + lay + `",operation_type="synchronous_bytes_served"} 9`,
		`soci_fs_image_operation_count_key{image="` + img + `",operation_type="file.Read"} 1`,
		`soci_fs_layer_size_bytes{digest="` + lay + `",mountpoint="/mnt/a"} 5`,
		"# TYPE soci_fs_layer_fetched_size_bytes counter",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("exposition lacks %q", want)
		}
	}
}
