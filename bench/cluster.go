package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Paths a cluster run's nodes reach the origin registry by.
const (
	// PathDirect: every node pulls from the origin over the shared WAN link.
	PathDirect = "direct"
	// PathMirror: every node pulls from a pull-through mirror on the
	// (unshaped) cluster LAN, which alone reaches the origin over the link.
	PathMirror = "mirror"
	// PathMirrorWarm: as PathMirror, but before the nodes start the mirror
	// is filled with one whole GET of every layer (counted in the origin
	// bytes, not in the TTRs): what a cache that already holds the image,
	// or one that stores whole blobs on a range request, gives.
	PathMirrorWarm = "mirror-warm"
)

// isMirror reports whether path goes through the mirror.
func isMirror(path string) bool { return path == PathMirror || path == PathMirrorWarm }

// ClusterNode is one node's pull and run in a cluster run.
type ClusterNode struct {
	Node        int     `json:"node"`
	TTRSeconds  float64 `json:"ttr_seconds"`
	PullSeconds float64 `json:"pull_seconds"`
	// LazyLayers is how many layers the node mounted lazily (FUSE) and
	// Fallbacks how many its daemon failed to mount remotely (containerd
	// then downloaded them); zero under overlayfs.
	LazyLayers int `json:"lazy_layers"`
	Fallbacks  int `json:"fallbacks"`
	// CPU is the CPU time of the node's processes from the moment every
	// node was told to start until this node was ready (its nerdctl pull
	// included); StartCPU what they spent before, starting up.
	CPU      CPUSplit `json:"cpu_seconds"`
	StartCPU CPUSplit `json:"start_cpu_seconds"`
	Error    string   `json:"error,omitempty"`
}

// MirrorStats are what the mirror's and the origin's access logs say about
// blob GETs during one run.
type MirrorStats struct {
	// Full is layer GETs the mirror answered 200 with the whole blob,
	// Partial those answered 206 (ranges it served from its cache), Failed
	// those it logged with another status: 500 when the client hung up
	// before the whole blob was sent (the mirror then caches nothing).
	Full    int `json:"full_answers"`
	Partial int `json:"partial_answers"`
	Failed  int `json:"failed_answers"`
	// OriginBlobGets is blob GETs the origin got (from the mirror, or the
	// nodes on the direct path), OriginFull those it answered 200.
	OriginBlobGets int `json:"origin_blob_gets"`
	OriginFull     int `json:"origin_full_answers"`
}

// ClusterRun is N nodes starting one image at the same moment.
type ClusterRun struct {
	Nodes       int    `json:"nodes"`
	Path        string `json:"path"`
	Snapshotter string `json:"snapshotter"`
	Iteration   int    `json:"iteration"`
	// OriginBytes are the bytes the WAN link carried to the cluster until
	// the last node was ready, OriginBytesTotal until every container
	// exited and the nodes stopped (background fetches included).
	OriginBytes      int64 `json:"origin_bytes"`
	OriginBytesTotal int64 `json:"origin_bytes_total"`
	// MirrorBytes are the bytes the mirror sent to nodes (same bounds).
	MirrorBytes      int64         `json:"mirror_bytes"`
	MirrorBytesTotal int64         `json:"mirror_bytes_total"`
	Stats            MirrorStats   `json:"access_logs"`
	NodeResults      []ClusterNode `json:"node_results"`
	// WindowSeconds is from the start of every node to the last node
	// ready, MachineBusySeconds the CPU time (all cores, every process of
	// the machine, other users' included) spent meanwhile.
	WindowSeconds      float64 `json:"window_seconds"`
	MachineBusySeconds float64 `json:"machine_busy_seconds"`
	// InfraCPUSeconds is the CPU time the simulation's own processes spent
	// in the window: the bench (the links' relays), the origin and mirror
	// registries. A real cluster runs them elsewhere.
	InfraCPUSeconds float64 `json:"infra_cpu_seconds"`
	Error           string  `json:"error,omitempty"`
}

// OK reports whether the run and every node reached ready.
func (r ClusterRun) OK() bool {
	if r.Error != "" || len(r.NodeResults) != r.Nodes {
		return false
	}
	for _, n := range r.NodeResults {
		if n.Error != "" {
			return false
		}
	}
	return true
}

// TTRs are the nodes' TTRs, NaN for a node that failed.
func (r ClusterRun) TTRs() []float64 {
	out := make([]float64, len(r.NodeResults))
	for i, n := range r.NodeResults {
		out[i] = n.TTRSeconds
		if n.Error != "" {
			out[i] = math.NaN()
		}
	}
	return out
}

// CPU sums the nodes' CPU until ready, and their start-up CPU.
func (r ClusterRun) CPU() (untilReady, start CPUSplit) {
	for _, n := range r.NodeResults {
		untilReady, start = untilReady.Add(n.CPU), start.Add(n.StartCPU)
	}
	return untilReady, start
}

// Fallbacks sums the nodes' fallbacks.
func (r ClusterRun) Fallbacks() int {
	f := 0
	for _, n := range r.NodeResults {
		f += n.Fallbacks
	}
	return f
}

// ClusterReport is everything one cluster invocation measured.
type ClusterReport struct {
	Started  time.Time    `json:"started"`
	Link     string       `json:"link"`
	Shaping  ShapingInfo  `json:"shaping"`
	Workload WorkloadInfo `json:"workload"`
	Runs     int          `json:"runs"`
	NodeSets []int        `json:"node_counts"`
	Results  []ClusterRun `json:"results"`
	// Cores is runtime.NumCPU() of the machine every node ran on.
	Cores      int  `json:"cores"`
	DropCaches bool `json:"page_cache_dropped"`
}

// ClusterRow summarizes the runs of one (nodes, path, snapshotter).
type ClusterRow struct {
	Nodes       int
	Path        string
	Snapshotter string
	OK, Runs    int
	// TTRMedian is the median over all nodes of all runs; TTRMax the
	// median over runs of each run's slowest node.
	TTRMedian, TTRMax float64
	// Medians over runs, in bytes.
	OriginBytes, OriginBytesTotal, MirrorBytes float64
	Fallbacks                                  int
	Stats                                      MirrorStats // summed over runs
	// CPU is the nodes' CPU until ready summed over nodes, StartCPU their
	// start-up CPU; MachineBusy and Window as in ClusterRun. All are means
	// over the runs where every node got ready (NaN without one).
	CPU, StartCPU              CPUSplit
	MachineBusy, Window, Infra float64
	// Floor is CPU.Total() over the machine's cores: the least wall time
	// in which those cores can do that work, so a bound below TTRMax.
	// FloorNotOurs is the same for the CPU of everything but our daemon
	// and its hosts (containerd, shims, runc, nerdctl).
	Floor, FloorNotOurs float64
}

// Rows summarizes the report per (nodes, path, snapshotter), in the order
// node counts, then paths, then snapshotters first appear.
func (r *ClusterReport) Rows() []ClusterRow {
	type key struct {
		n       int
		path, s string
	}
	var order []key
	groups := map[key][]ClusterRun{}
	for _, run := range r.Results {
		k := key{run.Nodes, run.Path, run.Snapshotter}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], run)
	}
	var rows []ClusterRow
	for _, k := range order {
		row := ClusterRow{Nodes: k.n, Path: k.path, Snapshotter: k.s, Runs: len(groups[k])}
		var ttrs, maxes, origin, originTotal, mirror []float64
		var busy, window, infra float64
		for _, run := range groups[k] {
			row.Fallbacks += run.Fallbacks()
			row.Stats.Full += run.Stats.Full
			row.Stats.Partial += run.Stats.Partial
			row.Stats.Failed += run.Stats.Failed
			row.Stats.OriginBlobGets += run.Stats.OriginBlobGets
			row.Stats.OriginFull += run.Stats.OriginFull
			if !run.OK() {
				continue
			}
			row.OK++
			t := run.TTRs()
			ttrs = append(ttrs, t...)
			maxes = append(maxes, Summarize(t).Max)
			origin = append(origin, float64(run.OriginBytes))
			originTotal = append(originTotal, float64(run.OriginBytesTotal))
			mirror = append(mirror, float64(run.MirrorBytes))
			cpu, start := run.CPU()
			row.CPU, row.StartCPU = row.CPU.Add(cpu), row.StartCPU.Add(start)
			busy += run.MachineBusySeconds
			window += run.WindowSeconds
			infra += run.InfraCPUSeconds
		}
		row.MachineBusy, row.Window, row.Infra = math.NaN(), math.NaN(), math.NaN()
		row.Floor, row.FloorNotOurs = math.NaN(), math.NaN()
		if row.OK > 0 {
			k := float64(row.OK)
			row.CPU, row.StartCPU = row.CPU.Scale(1/k), row.StartCPU.Scale(1/k)
			row.MachineBusy, row.Window, row.Infra = busy/k, window/k, infra/k
			if r.Cores > 0 {
				row.Floor = row.CPU.Total() / float64(r.Cores)
				row.FloorNotOurs = (row.CPU.Total() - row.CPU.Ours()) / float64(r.Cores)
			}
		}
		row.TTRMedian, row.TTRMax = Summarize(ttrs).Median, Summarize(maxes).Median
		row.OriginBytes, row.OriginBytesTotal = Summarize(origin).Median, Summarize(originTotal).Median
		row.MirrorBytes = Summarize(mirror).Median
		rows = append(rows, row)
	}
	return rows
}

// ClusterGoal is one of the targets for the mirror path, computed
// for one snapshotter: Value against Limit (met when Value <= Limit).
type ClusterGoal struct {
	Snapshotter string // "<path> <snapshotter>"
	Name        string
	Value       float64 // NaN when a side is missing
	Limit       float64
}

// Met reports whether the goal's value is known and within its limit.
func (g ClusterGoal) Met() bool { return !math.IsNaN(g.Value) && g.Value <= g.Limit }

// Goals computes, per mirror path and snapshotter, origin bytes of the
// largest node count over those of one node (limit 1.2) and the slowest
// node's TTR at the largest count over the single node's TTR (limit 1.5).
func Goals(rows []ClusterRow) []ClusterGoal {
	largest := 0
	for _, r := range rows {
		largest = max(largest, r.Nodes)
	}
	find := func(n int, path, s string) (ClusterRow, bool) {
		for _, r := range rows {
			if r.Nodes == n && r.Path == path && r.Snapshotter == s {
				return r, true
			}
		}
		return ClusterRow{}, false
	}
	type cell struct{ path, s string }
	var cells []cell
	for _, r := range rows {
		if c := (cell{r.Path, r.Snapshotter}); isMirror(r.Path) && !slices.Contains(cells, c) {
			cells = append(cells, c)
		}
	}
	var out []ClusterGoal
	for _, c := range cells {
		s := c.path + " " + c.s
		one, ok1 := find(1, c.path, c.s)
		big, ok2 := find(largest, c.path, c.s)
		bytesRatio, ttrRatio := math.NaN(), math.NaN()
		if ok1 && ok2 && largest > 1 {
			bytesRatio = ratio(big.OriginBytes, one.OriginBytes)
			ttrRatio = ratio(big.TTRMax, one.TTRMedian)
		}
		out = append(out,
			ClusterGoal{s, fmt.Sprintf("origin bytes N=%d / N=1", largest), bytesRatio, 1.2},
			ClusterGoal{s, fmt.Sprintf("TTR max N=%d / TTR N=1", largest), ttrRatio, 1.5})
	}
	return out
}

// CPUFloor compares, for one path and snapshotter, the CPU floor of the
// largest node count with the TTR goal (1.5 x the single node's TTR).
type CPUFloor struct {
	Cell  string // "<path> <snapshotter>"
	Nodes int
	// Floor and FloorNotOurs as in ClusterRow; Limit is 1.5 x the TTR at
	// N = 1, TTRMax the slowest node's TTR at Nodes.
	Floor, FloorNotOurs, Limit, TTRMax float64
	// FloorWithInfra adds the simulation's own CPU (ClusterRow.Infra),
	// which competes for the same cores here but not in a real cluster.
	FloorWithInfra float64
}

// Unreachable reports whether the floor alone exceeds the goal: no
// snapshotter could meet it with the nodes' present CPU on these cores.
func (f CPUFloor) Unreachable() bool { return f.Floor > f.Limit }

// UnreachableNotOurs reports whether the CPU of everything but our daemon
// and hosts alone exceeds the goal: whatever our processes did.
func (f CPUFloor) UnreachableNotOurs() bool { return f.FloorNotOurs > f.Limit }

// CPUFloors computes a CPUFloor for every path and snapshotter measured
// at N = 1 and at a larger count (the largest).
func CPUFloors(rows []ClusterRow, cores int) []CPUFloor {
	largest := 0
	for _, r := range rows {
		largest = max(largest, r.Nodes)
	}
	if largest < 2 || cores < 1 {
		return nil
	}
	var out []CPUFloor
	for _, big := range rows {
		if big.Nodes != largest {
			continue
		}
		for _, one := range rows {
			if one.Nodes == 1 && one.Path == big.Path && one.Snapshotter == big.Snapshotter {
				out = append(out, CPUFloor{Cell: big.Path + " " + big.Snapshotter, Nodes: largest, Floor: big.Floor,
					FloorNotOurs: big.FloorNotOurs, Limit: 1.5 * one.TTRMedian, TTRMax: big.TTRMax,
					FloorWithInfra: big.Floor + big.Infra/float64(cores)})
			}
		}
	}
	return out
}

func ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return math.NaN()
	}
	return a / b
}

// WriteTable prints the rows, the mirror's answers and the goals.
func (r *ClusterReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "cluster: %s, WAN link %s, %d cold run(s) per cell, %d cores shared by every node\n",
		r.Workload.Name, r.Link, r.Runs, r.Cores)
	fmt.Fprintf(w, "image %.1f MB compressed in %d layers; TTR med = median over nodes, max = slowest node (median over runs);\n",
		float64(r.Workload.CompressedBytes)/1e6, r.Workload.Layers)
	fmt.Fprintln(w, "origin MB = bytes through the WAN link until the last node is ready (total: until the nodes stop);")
	fmt.Fprintln(w, "mirror MB = bytes the mirror sent to nodes until the last node is ready; layer GETs from the access logs.")
	fmt.Fprintln(w)
	rows := r.Rows()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "nodes\tpath\tsnapshotter\tok\tTTR med s\tTTR max s\torigin MB\torigin MB total\tmirror MB\tfallbacks\tmirror 200/206/other\torigin GETs (200)")
	for _, row := range rows {
		mirrorAns := "-"
		if isMirror(row.Path) {
			mirrorAns = fmt.Sprintf("%d/%d/%d", row.Stats.Full, row.Stats.Partial, row.Stats.Failed)
		}
		mirrorMB := "-"
		if isMirror(row.Path) {
			mirrorMB = fmtNum(row.MirrorBytes/1e6, 1)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d (%d)\n", row.Nodes, row.Path, row.Snapshotter,
			row.OK, row.Runs, fmtNum(row.TTRMedian, 2), fmtNum(row.TTRMax, 2), fmtNum(row.OriginBytes/1e6, 1),
			fmtNum(row.OriginBytesTotal/1e6, 1), mirrorMB, row.Fallbacks, mirrorAns, row.Stats.OriginBlobGets, row.Stats.OriginFull)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nCPU (user+sys s, mean over runs) of all nodes' processes from the common start until each node was ready;\n")
	fmt.Fprintf(w, "shim = shims with runc and the container; start = per node before the start (containerd, daemon, host up);\n")
	fmt.Fprintf(w, "infra = the bench's relays and the registries (not in CPU s); floor = CPU / %d cores, the least wall time for the nodes' work;\n", r.Cores)
	fmt.Fprintln(w, "machine = CPU of every process on the machine (other users too) from the start to the last node ready (window).")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "nodes\tpath\tsnapshotter\tCPU s\tdaemon\thost\tcontainerd\tshim\tnerdctl\tother\tper node\tstart/node\tinfra\tfloor s\tfloor w/o ours\tTTR max s\tmachine s / window s")
	for _, row := range rows {
		if row.OK == 0 {
			fmt.Fprintf(tw, "%d\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\n", row.Nodes, row.Path, row.Snapshotter)
			continue
		}
		c, n := row.CPU, float64(row.Nodes)
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s / %s\n", row.Nodes, row.Path, row.Snapshotter,
			fmtNum(c.Total(), 2), fmtNum(c.Daemon, 2), fmtNum(c.Host, 2), fmtNum(c.Containerd, 2), fmtNum(c.Shim, 2), fmtNum(c.Nerdctl, 2),
			fmtNum(c.Other, 2), fmtNum(c.Total()/n, 2), fmtNum(row.StartCPU.Total()/n, 2), fmtNum(row.Infra, 2), fmtNum(row.Floor, 2),
			fmtNum(row.FloorNotOurs, 2), fmtNum(row.TTRMax, 2), fmtNum(row.MachineBusy, 1), fmtNum(row.Window, 1))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if floors := CPUFloors(rows, r.Cores); len(floors) > 0 {
		fmt.Fprintln(w, "\nCPU floor against the TTR goal (TTR max <= 1.5 x TTR at N=1):")
		for _, f := range floors {
			verdict := "the floor leaves room"
			switch {
			case math.IsNaN(f.Floor) || math.IsNaN(f.Limit):
				verdict = "not measured"
			case f.UnreachableNotOurs():
				verdict = "unreachable on these cores, whatever our daemon and host do"
			case f.Unreachable():
				verdict = "unreachable on these cores with this CPU per node"
			}
			fmt.Fprintf(w, "  %-22s N=%d floor %s s (w/o ours %s s, with infra %s s) vs 1.5 x TTR N=1 = %s s (TTR max %s s): %s\n", f.Cell, f.Nodes,
				fmtNum(f.Floor, 2), fmtNum(f.FloorNotOurs, 2), fmtNum(f.FloorWithInfra, 2), fmtNum(f.Limit, 2), fmtNum(f.TTRMax, 2), verdict)
		}
	}
	fmt.Fprintln(w, "\nGoals on the mirror paths:")
	for _, g := range Goals(rows) {
		verdict := "not met"
		if g.Met() {
			verdict = "met"
		}
		if math.IsNaN(g.Value) {
			verdict = "not measured"
		}
		fmt.Fprintf(w, "  %-22s %-26s %s (limit %.1f): %s\n", g.Snapshotter, g.Name, fmtNum(g.Value, 2), g.Limit, verdict)
	}
	return nil
}

func fmtNum(x float64, prec int) string {
	if math.IsNaN(x) {
		return "-"
	}
	return fmt.Sprintf("%.*f", prec, x)
}

// WriteJSON writes the report to path, creating its directory.
func (r *ClusterReport) WriteJSON(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode cluster results: %w", err)
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// MirrorHostsToml is the hosts.toml (containerd's format, which our daemon
// reads too) that sends pulls and resolves of origin ("host:port", plain
// HTTP) to mirror first ("host:port", plain HTTP); the origin stays the
// fallback.
func MirrorHostsToml(origin, mirror string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "server = %q\n\n", "http://"+origin)
	fmt.Fprintf(&b, "[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+mirror)
	return b.String()
}
