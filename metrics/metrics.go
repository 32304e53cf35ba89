package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Failure kinds counted by soci_failures_total.
const (
	FailureVerification = "verification" // a span or whole layer digest mismatch
	FailureFetch        = "fetch"        // a span or background chunk could not be fetched
	FailureMount        = "mount"        // a lazy mount failed (not "no index": that falls back)
	// Background walk (fs/background): why a layer was not reported fully local.
	FailureSpanLoad     = "span_load"     // a span did not load, or is not cached after the walk
	FailureUnverified   = "unverified"    // the whole-blob digest check (or the tar cross-check) could not run
	FailureZTOCMismatch = "ztoc_mismatch" // the zTOC's file table or spans disagree with the verified blob
	// FailureWindowMismatch: a span's gzip checkpoint window disagrees with
	// the bytes before it (fs/span; counted once per span found).
	FailureWindowMismatch = "window_mismatch"
)

// Modes of soci_fuse_opens_total.
const (
	OpenPassthrough = "passthrough"
	OpenFUSE        = "fuse"
)

// GET kinds of soci_registry_get_* metrics.
const (
	KindManifest = "manifest"
	KindBlob     = "blob"
	KindRange    = "range"
)

// Metrics holds every collector of the daemon and the registry they are
// registered with. All methods are safe for concurrent use; a nil *Metrics
// records nothing.
type Metrics struct {
	reg *prometheus.Registry

	registryGet      *prometheus.HistogramVec
	registryBytes    *prometheus.CounterVec
	cacheHits        prometheus.Counter
	cacheMisses      prometheus.Counter
	readLatency      prometheus.Histogram
	backgroundBytes  prometheus.Counter
	backgroundLayers prometheus.Counter
	prefetchSpans    prometheus.Counter
	prefetchBytes    prometheus.Counter
	mountLatency     prometheus.Histogram
	failures         *prometheus.CounterVec
	opens            *prometheus.CounterVec
	passthroughOff   prometheus.Counter

	ref *reference // the reference snapshotter's series (reference.go)
}

// New returns metrics registered with a fresh registry (plus the Go runtime
// and process collectors).
func New() *Metrics {
	reg := prometheus.NewRegistry()
	r := registrar{reg}
	m := &Metrics{
		reg: reg,
		registryGet: r.histogramVec("soci_registry_get_duration_seconds",
			"Latency of registry GETs (manifests, whole blobs, blob ranges), through the last body byte.",
			secondsBuckets(), "kind"),
		registryBytes: r.counterVec("soci_registry_get_bytes_total", "Bytes received from registries, by kind of GET.", "kind"),
		cacheHits:     r.counter("soci_span_cache_hits_total", "Span reads served from the span cache."),
		cacheMisses:   r.counter("soci_span_cache_misses_total", "Span reads that waited for a fetch from the registry."),
		readLatency: r.histogram("soci_fuse_read_duration_seconds", "Latency of FUSE file reads of lazily loaded layers.",
			prometheus.ExponentialBuckets(0.00001, 4, 12)),
		backgroundBytes:  r.counter("soci_background_fetch_bytes_total", "Compressed bytes fetched by the background fetcher."),
		backgroundLayers: r.counter("soci_background_layers_completed_total", "Layers the background fetcher made fully local."),
		prefetchSpans:    r.counter("soci_prefetch_spans_total", "Spans loaded ahead of reads from the layers' prefetch artifacts."),
		prefetchBytes:    r.counter("soci_prefetch_bytes_total", "Compressed bytes fetched to load the spans of the layers' prefetch artifacts."),
		mountLatency: r.histogram("soci_mount_duration_seconds", "Latency of lazy layer mounts (index discovery, zTOC, FUSE mount).",
			secondsBuckets()),
		failures: r.counterVec("soci_failures_total",
			"Failures by kind: verification, fetch, mount, span_load, unverified, ztoc_mismatch, window_mismatch.", "kind"),
		opens: r.counterVec("soci_fuse_opens_total",
			"FUSE OPEN requests answered on layers with [fuse] passthrough, by how the file is read: passthrough (a backing file, no READ requests) or fuse.", "mode"),
		passthroughOff: r.counter("soci_fuse_passthrough_refused_total",
			"Layer mounts on which the kernel refused FUSE passthrough ([fuse] passthrough on): their files are read through FUSE."),
		ref: newReference(),
	}
	reg.MustRegister(m.ref.collectors()...)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, k := range []string{OpenPassthrough, OpenFUSE} {
		m.opens.WithLabelValues(k)
	}
	for _, k := range []string{KindManifest, KindBlob, KindRange} {
		m.registryBytes.WithLabelValues(k)
		m.registryGet.WithLabelValues(k)
	}
	for _, k := range []string{FailureVerification, FailureFetch, FailureMount, FailureSpanLoad, FailureUnverified, FailureZTOCMismatch, FailureWindowMismatch} {
		m.failures.WithLabelValues(k) // present at 0 so that rates work from the start
	}
	return m
}

// secondsBuckets are the buckets of operations that take milliseconds to
// seconds: 1 ms to about 33 s.
func secondsBuckets() []float64 { return prometheus.ExponentialBuckets(0.001, 2, 16) }

// registrar makes collectors registered with reg.
type registrar struct{ reg *prometheus.Registry }

func (r registrar) counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	r.reg.MustRegister(c)
	return c
}

func (r registrar) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	r.reg.MustRegister(c)
	return c
}

func (r registrar) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	r.reg.MustRegister(h)
	return h
}

func (r registrar) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	r.reg.MustRegister(h)
	return h
}

// Registry is the registry the metrics are registered with.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// ObserveGet records one registry GET of kind (KindManifest, KindBlob,
// KindRange) that took took and received n bytes.
func (m *Metrics) ObserveGet(kind string, took time.Duration, n int64) {
	if m == nil {
		return
	}
	m.registryGet.WithLabelValues(kind).Observe(took.Seconds())
	if n > 0 {
		m.registryBytes.WithLabelValues(kind).Add(float64(n))
	}
}

// ObserveOpen counts one OPEN answered on a layer with passthrough, read
// through a backing file or not.
func (m *Metrics) ObserveOpen(passthrough bool) {
	if m == nil {
		return
	}
	mode := OpenFUSE
	if passthrough {
		mode = OpenPassthrough
	}
	m.opens.WithLabelValues(mode).Inc()
}

// PassthroughRefused counts one layer mount whose kernel refused FUSE
// passthrough.
func (m *Metrics) PassthroughRefused() {
	if m == nil {
		return
	}
	m.passthroughOff.Inc()
}

// ObserveRead records one read of a lazily loaded layer: its latency and
// how many spans came from the cache and how many were fetched.
func (m *Metrics) ObserveRead(took time.Duration, hits, misses int) {
	if m == nil {
		return
	}
	m.readLatency.Observe(took.Seconds())
	m.cacheHits.Add(float64(hits))
	m.cacheMisses.Add(float64(misses))
}

// Failure counts one failure of kind (FailureVerification, FailureFetch,
// FailureMount, ...). A mount failure is also two of the reference's
// counts: fuse_mount_failure_count (its lazy mount failed) and
// local_mount_failure_count (the snapshotter could not prepare the layer
// itself and handed it to containerd). The reference tries to pull and
// unpack the layer itself between the two, and counts the second only when
// that fails too; the daemon has no such step and hands the layer to
// containerd at once, so both count every failed lazy mount.
func (m *Metrics) Failure(kind string) {
	if m == nil {
		return
	}
	m.failures.WithLabelValues(kind).Inc()
	if kind == FailureMount {
		m.ref.count.WithLabelValues(OpFuseMountFailureCount, "").Inc()
		m.ref.count.WithLabelValues(OpLocalMountFailureCount, "").Inc()
	}
}

// ObserveMount records the latency of one successful lazy mount.
func (m *Metrics) ObserveMount(took time.Duration) {
	if m == nil {
		return
	}
	m.mountLatency.Observe(took.Seconds())
}

// BackgroundBytes counts n compressed bytes fetched in the background.
func (m *Metrics) BackgroundBytes(n int64) {
	if m == nil {
		return
	}
	m.backgroundBytes.Add(float64(n))
}

// Prefetched counts spans, of bytes compressed bytes, fetched for a
// layer's prefetch artifact.
func (m *Metrics) Prefetched(spans int, bytes int64) {
	if m == nil {
		return
	}
	m.prefetchSpans.Add(float64(spans))
	m.prefetchBytes.Add(float64(bytes))
}

// LayerCompleted counts one layer made fully local in the background.
func (m *Metrics) LayerCompleted() {
	if m == nil {
		return
	}
	m.backgroundLayers.Inc()
}
