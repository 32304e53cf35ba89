package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The reference snapshotter's (awslabs/soci-snapshotter) series, served
// next to ours so that dashboards and alerts written for it keep working.
// Names, types, units, buckets and label names are the reference's; the
// README's metrics section maps each to the events that feed it here and
// to our own series.
const (
	RefOperationDurationMs = "soci_fs_operation_duration_milliseconds"
	RefOperationDurationUs = "soci_fs_operation_duration_microseconds"
	RefOperationCount      = "soci_fs_operation_count"
	RefBytesServed         = "soci_fs_bytes_served"
	RefImageOperationCount = "soci_fs_image_operation_count_key"
	RefLayerFetchedSize    = "soci_fs_layer_fetched_size_bytes"
	RefLayerSize           = "soci_fs_layer_size_bytes"
)

// operation_type values of the reference's duration histograms.
const (
	OpMount             = "mount"               // ms: a whole lazy Mount
	OpRemoteRegistryGet = "remote_registry_get" // ms: one range fetch of a layer blob
	OpInitMetadataStore = "init_metadata_store" // ms: building the layer's file tree from its TOC
	OpBackgroundFetch   = "background_fetch"    // ms: the background walk of one layer
	OpZtocUnmarshal     = "ztoc_unmarshal"      // ms: opening the layer's zTOC (a fetch when not local, parse, convert)
	OpFuseMount         = "fuse_mount"          // ms: mounting the FUSE server of a layer
	OpSociIndexFetch    = "soci_index_fetch"    // ms: finding an image's SOCI index, first time per index only
	OpSynchronousRead   = "synchronous_read"    // µs: one FUSE read
	OpNodeReaddir       = "node_readdir"        // µs: one FUSE readdir
)

// operation_type values of the reference's soci_fs_operation_count and
// soci_fs_bytes_served.
const (
	OpSynchronousReadCount              = "synchronous_read_count"
	OpSynchronousReadRegistryFetchCount = "synchronous_read_remote_registry_fetch_count"
	OpSynchronousBytesServed            = "synchronous_bytes_served"
	OpFuseFailureState                  = "fuse_failure_state"
	OpFuseMountFailureCount             = "fuse_mount_failure_count"
	OpLocalMountFailureCount            = "local_mount_failure_count"
	OpBackgroundSpanFetchCount          = "background_span_fetch_count"
	OpBackgroundSpanFetchFailureCount   = "background_span_fetch_failure_count"
	OpBackgroundFetchWorkQueueEvicted   = "background_fetch_work_queue_evicted"
	OpBackgroundFetchWorkQueueSize      = "background_fetch_work_queue_size" // an image operation count, image ""
	OpFuseUnknownFailureCount           = "fuse_unknown_operation_failure_count"
)

// FUSEOp is a FUSE operation as the reference names and counts it.
type FUSEOp int

// The FUSE operations of soci_fs_image_operation_count_key.
const (
	FUSENodeGetattr FUSEOp = iota
	FUSENodeGetxattr
	FUSENodeListxattr
	FUSENodeLookup
	FUSENodeOpen
	FUSENodeReaddir
	FUSENodeReadlink
	FUSEFileRead
	FUSEFileGetattr
	FUSEWhiteoutGetattr
	numFUSEOps
)

// fuseOps are the reference's names of the FUSE operations (the
// operation_type of soci_fs_image_operation_count_key) and of the
// operation_type counting their failures ("" for none).
var fuseOps = [numFUSEOps]struct{ name, failure string }{
	FUSENodeGetattr:     {"node.Getattr", "fuse_node_getattr_failure_count"},
	FUSENodeGetxattr:    {"node.Getxattr", ""},
	FUSENodeListxattr:   {"node.Listxattr", "fuse_node_listxattr_failure_count"},
	FUSENodeLookup:      {"node.Lookup", "fuse_node_lookup_failure_count"},
	FUSENodeOpen:        {"node.Open", "fuse_node_open_failure_count"},
	FUSENodeReaddir:     {"node.Readdir", "fuse_node_readdir_failure_count"},
	FUSENodeReadlink:    {"node.Readlink", ""},
	FUSEFileRead:        {"file.Read", "fuse_file_read_failure_count"},
	FUSEFileGetattr:     {"file.Getattr", "fuse_file_getattr_failure_count"},
	FUSEWhiteoutGetattr: {"whiteout.Getattr", "fuse_whiteout_getattr_failure_count"},
}

// String is the reference's name of the operation.
func (op FUSEOp) String() string {
	if op < 0 || op >= numFUSEOps {
		return "unknown"
	}
	return fuseOps[op].name
}

// fuseFailureBlock: fuse_failure_state counts at most one FUSE failure per
// block of this length, as the reference does (an alarm period).
const fuseFailureBlock = 5 * time.Minute

// maxIndexSeen bounds the set of SOCI index digests whose first lookup was
// timed; when full it is cleared (a later lookup is then timed again).
const maxIndexSeen = 4096

// reference holds the reference's collectors.
type reference struct {
	durationMs  *prometheus.HistogramVec
	durationUs  *prometheus.HistogramVec
	count       *prometheus.CounterVec
	bytesServed *prometheus.GaugeVec
	imageOps    *prometheus.GaugeVec

	now func() time.Time

	mu          sync.Mutex
	layers      map[string]*Layer // mounted, by mountpoint
	queueLen    func() int        // the background queue's length; nil: none
	lastFailure time.Time         // the block fuse_failure_state last counted
	indexSeen   map[string]struct{}
}

func newReference() *reference {
	r := &reference{
		durationMs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    RefOperationDurationMs,
			Help:    "Reference-compatible: latency in milliseconds of snapshotter operations, by operation type and layer digest.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 15), // 1 ms .. 16384 ms
		}, []string{"operation_type", "layer"}),
		durationUs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    RefOperationDurationUs,
			Help:    "Reference-compatible: latency in microseconds of FUSE operations, by operation type and layer digest.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11), // 1 µs .. 1024 µs
		}, []string{"operation_type", "layer"}),
		count: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: RefOperationCount,
			Help: "Reference-compatible: count of snapshotter operations, by operation type and layer digest.",
		}, []string{"operation_type", "layer"}),
		bytesServed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: RefBytesServed,
			Help: "Reference-compatible: bytes served by FUSE reads, by operation type and layer digest.",
		}, []string{"operation_type", "layer"}),
		imageOps: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: RefImageOperationCount,
			Help: "Reference-compatible: FUSE operations by operation type and image manifest digest (live counts), and the background fetch queue length (image \"\").",
		}, []string{"operation_type", "image"}),
		now:       time.Now,
		layers:    map[string]*Layer{},
		indexSeen: map[string]struct{}{},
	}
	// Node-wide series, present at 0 from the start (as the reference does
	// for its queue eviction count) so that rates and alerts have data.
	for _, op := range fuseOps {
		if op.failure != "" {
			r.count.WithLabelValues(op.failure, "")
		}
	}
	for _, op := range []string{OpFuseUnknownFailureCount, OpFuseFailureState, OpFuseMountFailureCount, OpLocalMountFailureCount, OpBackgroundFetchWorkQueueEvicted} {
		r.count.WithLabelValues(op, "")
	}
	r.imageOps.WithLabelValues(OpBackgroundFetchWorkQueueSize, "")
	return r
}

// collectors are what New registers for the reference's series.
func (r *reference) collectors() []prometheus.Collector {
	return []prometheus.Collector{r.durationMs, r.durationUs, r.count, r.bytesServed, queueGauge{r}, layerSizes{r}}
}

// queueGauge serves soci_fs_image_operation_count_key, setting the queue
// length just before each scrape.
type queueGauge struct{ r *reference }

func (q queueGauge) Describe(ch chan<- *prometheus.Desc) { q.r.imageOps.Describe(ch) }

func (q queueGauge) Collect(ch chan<- prometheus.Metric) {
	q.r.mu.Lock()
	f := q.r.queueLen
	q.r.mu.Unlock()
	if f != nil {
		q.r.imageOps.WithLabelValues(OpBackgroundFetchWorkQueueSize, "").Set(float64(f()))
	}
	q.r.imageOps.Collect(ch)
}

var (
	layerFetchedDesc = prometheus.NewDesc(RefLayerFetchedSize, "Reference-compatible: compressed bytes of the layer fetched from the registry by this process.", []string{"digest", "mountpoint"}, nil)
	layerSizeDesc    = prometheus.NewDesc(RefLayerSize, "Reference-compatible: compressed size of the layer.", []string{"digest", "mountpoint"}, nil)
)

// layerSizes serves the per mounted layer series.
type layerSizes struct{ r *reference }

func (l layerSizes) Describe(ch chan<- *prometheus.Desc) {
	ch <- layerFetchedDesc
	ch <- layerSizeDesc
}

func (l layerSizes) Collect(ch chan<- prometheus.Metric) {
	l.r.mu.Lock()
	layers := make([]*Layer, 0, len(l.r.layers))
	for _, h := range l.r.layers {
		layers = append(layers, h)
	}
	l.r.mu.Unlock()
	for _, h := range layers {
		ch <- prometheus.MustNewConstMetric(layerFetchedDesc, prometheus.CounterValue, float64(h.fetched.Load()), h.digest, h.mountpoint)
		ch <- prometheus.MustNewConstMetric(layerSizeDesc, prometheus.CounterValue, float64(h.size), h.digest, h.mountpoint)
	}
}

func since(took time.Duration, unit time.Duration) float64 {
	return float64(took) / float64(unit)
}

// ObserveOperation records one operation op (an Op* duration constant
// measured in milliseconds) of layer (a layer digest, or "" for none) in
// soci_fs_operation_duration_milliseconds.
func (m *Metrics) ObserveOperation(op, layer string, took time.Duration) {
	if m == nil {
		return
	}
	m.ref.durationMs.WithLabelValues(op, layer).Observe(since(took, time.Millisecond))
}

// ObserveIndexFetch records how long finding the SOCI index idx of an image
// took, the first time idx is found in this process (later lookups are
// served from memory and would only dilute the series).
func (m *Metrics) ObserveIndexFetch(idx string, took time.Duration) {
	if m == nil || idx == "" {
		return
	}
	r := m.ref
	r.mu.Lock()
	_, seen := r.indexSeen[idx]
	if !seen {
		if len(r.indexSeen) >= maxIndexSeen {
			clear(r.indexSeen)
		}
		r.indexSeen[idx] = struct{}{}
	}
	r.mu.Unlock()
	if !seen {
		m.ObserveOperation(OpSociIndexFetch, idx, took)
	}
}

// LayerFetched records that the background walk made layer fully local
// after took (background_fetch).
func (m *Metrics) LayerFetched(layer string, took time.Duration) {
	m.ObserveOperation(OpBackgroundFetch, layer, took)
}

// QueueFull counts one layer the background queue had no room for (the
// new one or, with drop_oldest, the oldest).
func (m *Metrics) QueueFull() {
	if m == nil {
		return
	}
	m.ref.count.WithLabelValues(OpBackgroundFetchWorkQueueEvicted, "").Inc()
}

// SetBackgroundQueue gives the function that reports the background
// queue's length at each scrape.
func (m *Metrics) SetBackgroundQueue(f func() int) {
	if m == nil {
		return
	}
	m.ref.mu.Lock()
	m.ref.queueLen = f
	m.ref.mu.Unlock()
}

// fuseFailure counts a FUSE failure in fuse_failure_state, at most once per
// block of fuseFailureBlock.
func (r *reference) fuseFailure() {
	now := r.now()
	r.mu.Lock()
	count := r.lastFailure.IsZero() || now.Sub(r.lastFailure) >= fuseFailureBlock
	if count {
		r.lastFailure = now
	}
	r.mu.Unlock()
	if count {
		r.count.WithLabelValues(OpFuseFailureState, "").Inc()
	}
}

// Layer is the handle of one mounted layer: it feeds the reference's
// per-layer series and forwards to ours. It satisfies the span manager's
// Observer. A nil *Layer records nothing.
type Layer struct {
	m                 *Metrics
	digest            string
	mountpoint, image string
	size              int64
	fetched           atomic.Int64

	// Children looked up once; FUSE reads are hot.
	readUs, readdirUs, registryGet prometheus.Observer
	readCount, registryFetches     prometheus.Counter
	bgSpans, bgFailures            prometheus.Counter
	served                         prometheus.Gauge
	imageOps                       [numFUSEOps]prometheus.Gauge
}

// Layer returns the handle of the layer digest (compressed size bytes)
// mounted at mountpoint for the image with manifest digest image, and
// serves its size series until Close. A later handle for the same
// mountpoint replaces it.
func (m *Metrics) Layer(digest, mountpoint, image string, size int64) *Layer {
	if m == nil {
		return nil
	}
	r := m.ref
	h := &Layer{
		m: m, digest: digest, mountpoint: mountpoint, image: image, size: size,
		readUs:          r.durationUs.WithLabelValues(OpSynchronousRead, digest),
		readdirUs:       r.durationUs.WithLabelValues(OpNodeReaddir, digest),
		registryGet:     r.durationMs.WithLabelValues(OpRemoteRegistryGet, digest),
		readCount:       r.count.WithLabelValues(OpSynchronousReadCount, digest),
		registryFetches: r.count.WithLabelValues(OpSynchronousReadRegistryFetchCount, digest),
		bgSpans:         r.count.WithLabelValues(OpBackgroundSpanFetchCount, digest),
		bgFailures:      r.count.WithLabelValues(OpBackgroundSpanFetchFailureCount, digest),
		served:          r.bytesServed.WithLabelValues(OpSynchronousBytesServed, digest),
	}
	for op := range h.imageOps {
		h.imageOps[op] = r.imageOps.WithLabelValues(fuseOps[op].name, image)
	}
	r.mu.Lock()
	r.layers[mountpoint] = h
	r.mu.Unlock()
	return h
}

// Close stops serving the layer's size series.
func (h *Layer) Close() {
	if h == nil {
		return
	}
	r := h.m.ref
	r.mu.Lock()
	if r.layers[h.mountpoint] == h {
		delete(r.layers, h.mountpoint)
	}
	r.mu.Unlock()
}

// ObserveRead records one read of the span manager: ours, and the spans it
// had to fetch as synchronous_read_remote_registry_fetch_count.
func (h *Layer) ObserveRead(took time.Duration, hits, misses int) {
	if h == nil {
		return
	}
	h.m.ObserveRead(took, hits, misses)
	if misses > 0 {
		h.registryFetches.Add(float64(misses))
	}
}

// Failure counts one failure of kind in ours.
func (h *Layer) Failure(kind string) {
	if h == nil {
		return
	}
	h.m.Failure(kind)
}

// FUSE records one FUSE operation op that took took; failed: it returned
// an I/O error (not "no such entry" and the like); n: the bytes a read
// returned.
func (h *Layer) FUSE(op FUSEOp, took time.Duration, failed bool, n int) {
	if h == nil || op < 0 || op >= numFUSEOps {
		return
	}
	h.imageOps[op].Inc()
	switch op {
	case FUSEFileRead:
		h.readUs.Observe(since(took, time.Microsecond))
		h.readCount.Inc()
		if n > 0 {
			h.served.Add(float64(n))
		}
	case FUSENodeReaddir:
		h.readdirUs.Observe(since(took, time.Microsecond))
	}
	if failed {
		name := fuseOps[op].failure
		if name == "" {
			name = OpFuseUnknownFailureCount
		}
		h.m.ref.count.WithLabelValues(name, h.digest).Inc()
		h.m.ref.fuseFailure()
	}
}

// RegistryFetch records one range fetch of the layer's blob that took took
// and received n bytes.
func (h *Layer) RegistryFetch(took time.Duration, n int) {
	if h == nil {
		return
	}
	h.registryGet.Observe(since(took, time.Millisecond))
	if n > 0 {
		h.fetched.Add(int64(n))
	}
}

// BackgroundChunk records one chunk fetch of the background walk: spans
// spans fetched, or a failure.
func (h *Layer) BackgroundChunk(spans int, failed bool) {
	if h == nil {
		return
	}
	if failed {
		h.bgFailures.Inc()
		return
	}
	h.bgSpans.Add(float64(spans))
}
