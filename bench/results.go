package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"
)

// Run is the record of one cold pull and run of a workload.
type Run struct {
	Workload    string `json:"workload"`
	Snapshotter string `json:"snapshotter"`
	Iteration   int    `json:"iteration"`
	// TTRSeconds is pull start to the "ready" line on the container's stdout.
	TTRSeconds  float64 `json:"ttr_seconds"`
	PullSeconds float64 `json:"pull_seconds"`
	// RunSeconds is from the end of the pull to the "ready" line.
	RunSeconds float64 `json:"run_seconds"`
	// BytesBeforeReady and BytesTotal are counted at the shaping proxy (bytes
	// sent to clients, HTTP headers included); total is at container exit.
	BytesBeforeReady int64 `json:"bytes_before_ready"`
	BytesTotal       int64 `json:"bytes_total"`
	// BytesRead is what the container read from the image: the bytes the
	// probe's commands report reading plus the probe binary's size (it is
	// exec'd from the image); 0 when the probe reports none.
	BytesRead int64 `json:"bytes_read,omitempty"`
	// PrefetchedBytes are the compressed bytes our daemon's layer
	// prefetches fetched (its "prefetch done" log lines), by container exit.
	PrefetchedBytes int64 `json:"prefetched_bytes,omitempty"`
	// Connections is how many TCP connections were opened to the registry.
	Connections int64 `json:"connections"`
	// DaemonPeakRSS (VmHWM) and DaemonCPUSeconds (user + system) are those
	// of the snapshotter daemon's process, read once the run is over; zero
	// for overlayfs, which runs inside containerd.
	DaemonPeakRSS    int64   `json:"daemon_peak_rss_bytes,omitempty"`
	DaemonCPUSeconds float64 `json:"daemon_cpu_seconds,omitempty"`
	// Hosts is how many FUSE host processes (`soci-snapshotter-grpc
	// fuse-host`, started by our daemon in a session of their own) ran on
	// the daemon's root; HostPeakRSS and HostCPUSeconds are their sums.
	// Zero for overlayfs and for daemons without hosts (the reference).
	Hosts          int     `json:"fuse_hosts,omitempty"`
	HostPeakRSS    int64   `json:"host_peak_rss_bytes,omitempty"`
	HostCPUSeconds float64 `json:"host_cpu_seconds,omitempty"`
	// SnapshotterPeakPSS and SnapshotterPeakAnon are the peaks, sampled
	// every 100 ms from the pull to the end of the run, of the summed PSS
	// (smaps_rollup: shared pages such as the common executable's text
	// divided among the processes mapping them) and of the summed RssAnon
	// of the daemon and its hosts: what they held together at one instant.
	SnapshotterPeakPSS  int64 `json:"snapshotter_peak_pss_bytes,omitempty"`
	SnapshotterPeakAnon int64 `json:"snapshotter_peak_anon_bytes,omitempty"`
	// SnapshotterPeakDistinct is the peak, sampled with them, of the
	// resident pages of the daemon and its hosts counted once each
	// (/proc/PID/pagemap frames: a page of the executable mapped by both
	// counts once): the RSS of the processes taken together. For a daemon
	// without hosts (the reference) it is the daemon's RSS.
	SnapshotterPeakDistinct int64 `json:"snapshotter_peak_distinct_rss_bytes,omitempty"`
	// DaemonRSSAnon/File and HostRSSAnon/File (summed over hosts) are
	// RssAnon (heap, stacks) and RssFile (mapped files: the executable's
	// pages) of /proc/PID/status at the end of the run.
	DaemonRSSAnon int64 `json:"daemon_rss_anon_bytes,omitempty"`
	DaemonRSSFile int64 `json:"daemon_rss_file_bytes,omitempty"`
	HostRSSAnon   int64 `json:"host_rss_anon_bytes,omitempty"`
	HostRSSFile   int64 `json:"host_rss_file_bytes,omitempty"`
	// ContainerdPeakRSS and ContainerdCPUSeconds are containerd's (started
	// for the run; under overlayfs it decompresses and unpacks the layers).
	ContainerdPeakRSS    int64   `json:"containerd_peak_rss_bytes"`
	ContainerdCPUSeconds float64 `json:"containerd_cpu_seconds"`
	// ClientCPUSeconds and ClientPeakRSS are those of `nerdctl pull` (which
	// fetches the layers that are pulled in full) and `nerdctl run`; the
	// CPU is their sum, the RSS the larger.
	ClientCPUSeconds float64 `json:"client_cpu_seconds"`
	ClientPeakRSS    int64   `json:"client_peak_rss_bytes"`
	// FullyLocalSeconds is the time from ready until every lazily loaded
	// layer is local; nil: not measured (only our daemon logs it).
	FullyLocalSeconds *float64 `json:"fully_local_seconds"`
	// WarmRunSeconds (Config.Warm) is a second `nerdctl run` of the image
	// on the same node, from its start to "ready", after the first
	// container exited (ours: once every lazily loaded layer was fully
	// local) and the page cache was dropped; nil: not measured.
	WarmRunSeconds *float64 `json:"warm_run_seconds,omitempty"`
	Error          string   `json:"error,omitempty"`
}

// OK reports whether the run reached ready.
func (r Run) OK() bool { return r.Error == "" }

// SnapshotterPeakRSS is the daemon's peak RSS plus its FUSE hosts' (a sum
// of peaks: not less than what they held together at any one time).
func (r Run) SnapshotterPeakRSS() int64 { return r.DaemonPeakRSS + r.HostPeakRSS }

// SnapshotterCPUSeconds is the CPU time of the daemon and its FUSE hosts.
func (r Run) SnapshotterCPUSeconds() float64 { return r.DaemonCPUSeconds + r.HostCPUSeconds }

// NodePeakRSS is containerd's peak RSS plus the snapshotter's: what the node
// spent in memory to pull and serve the image (overlayfs: containerd alone).
func (r Run) NodePeakRSS() int64 { return r.ContainerdPeakRSS + r.SnapshotterPeakRSS() }

// NodeCPUSeconds is the CPU time of containerd, the snapshotter (daemon and
// hosts) and nerdctl: everything the node spent but the container itself.
func (r Run) NodeCPUSeconds() float64 {
	return r.ContainerdCPUSeconds + r.SnapshotterCPUSeconds() + r.ClientCPUSeconds
}

// Report is everything one invocation measured.
type Report struct {
	Started time.Time `json:"started"`
	// Link labels the shaping (mode, RTT, rate); Shaping is it in fields.
	Link    string      `json:"link"`
	Shaping ShapingInfo `json:"shaping"`
	// Slug names the report's files: "shared-20ms-200mbit".
	Slug         string            `json:"link_slug"`
	Runs         int               `json:"runs_per_pair"`
	SpanSize     int64             `json:"span_size"`
	Snapshotters []string          `json:"snapshotters"`
	Workloads    []WorkloadInfo    `json:"workloads"`
	Results      []Run             `json:"results"`
	Binaries     map[string]string `json:"binaries,omitempty"`
	DropCaches   bool              `json:"page_cache_dropped"`
}

// ShapingInfo is the modelled link of a report.
type ShapingInfo struct {
	// Mode is "shared" (one rate each way for all connections),
	// "per-conn" (a rate per TCP connection) or "unshaped".
	Mode     string  `json:"mode"`
	RTTMs    float64 `json:"rtt_ms"`
	RateMbit float64 `json:"rate_mbit"`
}

// WorkloadInfo describes a workload's image.
type WorkloadInfo struct {
	Name            string `json:"name"`
	Description     string `json:"description"`
	Layers          int    `json:"layers"`
	CompressedBytes int64  `json:"compressed_bytes"`
	// LayerDigests are the image's layer blobs, in order.
	LayerDigests []string `json:"layer_digests,omitempty"`
	Repo         string   `json:"repo"`
	Ref          string   `json:"ref"` // through the report's link
	// PrefetchRepo and PrefetchRef name the image with its recorded
	// prefetch artifact (Prefetch workloads).
	PrefetchRepo string  `json:"prefetch_repo,omitempty"`
	PrefetchRef  string  `json:"prefetch_ref,omitempty"`
	BuildSeconds float64 `json:"build_seconds"`
}

// WriteJSON writes the report to path, creating its directory.
func (r *Report) WriteJSON(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// series returns field f of the runs of (workload, snapshotter), indexed by
// iteration, NaN where the run failed or is missing.
func (r *Report) series(workload, snapshotter string, f func(Run) float64) []float64 {
	out := make([]float64, r.Runs)
	for i := range out {
		out[i] = math.NaN()
	}
	for _, run := range r.Results {
		if run.Workload == workload && run.Snapshotter == snapshotter && run.OK() && run.Iteration < len(out) {
			out[run.Iteration] = f(run)
		}
	}
	return out
}

func ttr(r Run) float64 { return r.TTRSeconds }

// warmRun is the warm second run's time to ready, NaN when not measured.
func warmRun(r Run) float64 {
	if r.WarmRunSeconds == nil {
		return math.NaN()
	}
	return *r.WarmRunSeconds
}

// fullyLocal is the time from ready until every lazily loaded layer was
// local, NaN when not measured.
func fullyLocal(r Run) float64 {
	if r.FullyLocalSeconds == nil {
		return math.NaN()
	}
	return *r.FullyLocalSeconds
}
