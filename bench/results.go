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
	// Connections is how many TCP connections were opened to the registry
	// (the bandwidth limit is per connection).
	Connections int64 `json:"connections"`
	// DaemonPeakRSS (VmHWM) and DaemonCPUSeconds are those of the
	// snapshotter daemon; zero for overlayfs, which runs inside containerd.
	DaemonPeakRSS    int64   `json:"daemon_peak_rss_bytes,omitempty"`
	DaemonCPUSeconds float64 `json:"daemon_cpu_seconds,omitempty"`
	// FullyLocalSeconds is the time until every layer is local; nil: n/a
	// (there is no background fetcher yet).
	FullyLocalSeconds *float64 `json:"fully_local_seconds"`
	Error             string   `json:"error,omitempty"`
}

// OK reports whether the run reached ready.
func (r Run) OK() bool { return r.Error == "" }

// Report is everything one invocation measured.
type Report struct {
	Started      time.Time         `json:"started"`
	Link         string            `json:"link"`
	Runs         int               `json:"runs_per_pair"`
	SpanSize     int64             `json:"span_size"`
	Snapshotters []string          `json:"snapshotters"`
	Workloads    []WorkloadInfo    `json:"workloads"`
	Results      []Run             `json:"results"`
	Binaries     map[string]string `json:"binaries,omitempty"`
	DropCaches   bool              `json:"page_cache_dropped"`
}

// WorkloadInfo describes a workload's image.
type WorkloadInfo struct {
	Name            string  `json:"name"`
	Description     string  `json:"description"`
	Layers          int     `json:"layers"`
	CompressedBytes int64   `json:"compressed_bytes"`
	Ref             string  `json:"ref"`
	BuildSeconds    float64 `json:"build_seconds"`
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

// fullyLocal is the time from ready until every lazily loaded layer was
// local, NaN when not measured.
func fullyLocal(r Run) float64 {
	if r.FullyLocalSeconds == nil {
		return math.NaN()
	}
	return *r.FullyLocalSeconds
}
