package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
)

// Ours is the name of our snapshotter in the report; Overlayfs that of
// containerd's default.
const (
	Ours      = "soci"
	Overlayfs = "overlayfs"
)

// WriteTable prints, per workload and snapshotter, medians (min-max) of
// times and bytes, then of memory and CPU, then per workload the paired
// ratios of ours to overlayfs and to each other snapshotter. The link (its
// mode, RTT and rate) heads the tables.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "link: %s\nspan size %d; %d cold runs per workload and snapshotter; medians (min-max)\n\n",
		r.Link, r.SpanSize, r.Runs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tsnapshotter\tok\tTTR s\tpull s\trun s\tMB before ready\tMB total\tMB read\tbefore ready/read\tfully local\twarm run s")
	for _, wl := range r.Workloads {
		for _, sn := range r.Snapshotters {
			if !r.ran(wl.Name, sn) {
				continue
			}
			s := r.cell(wl.Name, sn)
			local := "n/a"
			if vals := r.series(wl.Name, sn, fullyLocal); slices.ContainsFunc(vals, func(v float64) bool { return !math.IsNaN(v) }) {
				local = formatSummary(Summarize(vals), 2) + " s"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", wl.Name, sn, r.ok(wl.Name, sn), r.Runs,
				s(ttr, 1, 2),
				s(func(x Run) float64 { return x.PullSeconds }, 1, 2),
				s(func(x Run) float64 { return x.RunSeconds }, 1, 2),
				s(bytesBeforeReady, 1e6, 1),
				s(func(x Run) float64 { return float64(x.BytesTotal) }, 1e6, 1),
				s(bytesRead, 1e6, 1), s(beforeReadyPerRead, 1, 2),
				local, s(warmRun, 1, 3))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nMemory and CPU: peak RSS (VmHWM) and CPU s (user+system) per process, read at the end of the run;")
	fmt.Fprintln(w, "snapshotter = daemon + its FUSE hosts (sum); node = containerd + snapshotter (+ nerdctl for CPU).")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tsnapshotter\tnode RSS MB\tsnapshotter RSS MB\tdaemon MB\thost MB\tcontainerd MB\tnode CPU s\tsnapshotter CPU s\tdaemon CPU s\thost CPU s\tcontainerd CPU s\tnerdctl CPU s")
	for _, wl := range r.Workloads {
		for _, sn := range r.Snapshotters {
			if !r.ran(wl.Name, sn) {
				continue
			}
			s := r.cell(wl.Name, sn)
			snapRSS, daemonRSS, hostRSS, snapCPU, daemonCPU, hostCPU := "-", "-", "-", "-", "-", "-"
			if sn != Overlayfs {
				snapRSS = s(func(x Run) float64 { return float64(x.SnapshotterPeakRSS()) }, 1<<20, 0)
				daemonRSS = s(func(x Run) float64 { return float64(x.DaemonPeakRSS) }, 1<<20, 0)
				snapCPU = s(Run.SnapshotterCPUSeconds, 1, 2)
				daemonCPU = s(func(x Run) float64 { return x.DaemonCPUSeconds }, 1, 2)
				if r.hasHosts(wl.Name, sn) {
					hostRSS = s(func(x Run) float64 { return float64(x.HostPeakRSS) }, 1<<20, 0)
					hostCPU = s(func(x Run) float64 { return x.HostCPUSeconds }, 1, 2)
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", wl.Name, sn,
				s(nodeRSS, 1<<20, 0), snapRSS, daemonRSS, hostRSS,
				s(func(x Run) float64 { return float64(x.ContainerdPeakRSS) }, 1<<20, 0),
				s(Run.NodeCPUSeconds, 1, 2), snapCPU, daemonCPU, hostCPU,
				s(func(x Run) float64 { return x.ContainerdCPUSeconds }, 1, 2),
				s(func(x Run) float64 { return x.ClientCPUSeconds }, 1, 2))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := r.writeMemoryTable(w); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nRatios, paired run by run (lower is better for the first named): medians (min-max) over the pairs.")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tratio\tTTR\tMB before ready\tnode RSS\tnode CPU\twarm run\tpairs")
	for _, wl := range r.Workloads {
		for _, other := range r.Snapshotters {
			if other == Ours || !r.ran(wl.Name, Ours) || !r.ran(wl.Name, other) {
				continue
			}
			// Ours with the prefetch artifact is compared with ours
			// without, and other builds with it with ours with it.
			a, b := Ours, other
			switch {
			case other == OursPrefetch:
				a, b = other, Ours
			case strings.HasSuffix(other, "+prefetch"):
				a = OursPrefetch
			}
			ratio := func(f func(Run) float64) Summary {
				return Summarize(PairedRatios(r.series(wl.Name, a, f), r.series(wl.Name, b, f)))
			}
			t := ratio(ttr)
			fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\t%d\n", wl.Name, a, b, formatSummary(t, 3),
				formatSummary(ratio(bytesBeforeReady), 3), formatSummary(ratio(nodeRSS), 3),
				formatSummary(ratio(Run.NodeCPUSeconds), 3), formatSummary(ratio(warmRun), 3), t.N)
		}
	}
	return tw.Flush()
}

// cell returns a formatter of field f of (workload, snapshotter) in unit
// with prec decimals.
func (r *Report) cell(workload, sn string) func(f func(Run) float64, unit float64, prec int) string {
	return func(f func(Run) float64, unit float64, prec int) string {
		return formatSummary(Summarize(scale(r.series(workload, sn, f), unit)), prec)
	}
}

func (r *Report) ok(workload, sn string) int {
	ok := 0
	for _, run := range r.Results {
		if run.Workload == workload && run.Snapshotter == sn && run.OK() {
			ok++
		}
	}
	return ok
}

// hasHosts reports whether any run of (workload, snapshotter) had a FUSE
// host (daemons without hosts show "-" there rather than zero).
func (r *Report) hasHosts(workload, sn string) bool {
	for _, run := range r.Results {
		if run.Workload == workload && run.Snapshotter == sn && run.Hosts > 0 {
			return true
		}
	}
	return false
}

// ran reports whether (workload, snapshotter) has any run: a Prefetch
// workload runs only ours and ours with the artifact.
func (r *Report) ran(workload, sn string) bool {
	return slices.ContainsFunc(r.Results, func(x Run) bool { return x.Workload == workload && x.Snapshotter == sn })
}

func bytesBeforeReady(r Run) float64 { return float64(r.BytesBeforeReady) }

// bytesRead is NaN when the probe reported no reads.
func bytesRead(r Run) float64 {
	if r.BytesRead == 0 {
		return math.NaN()
	}
	return float64(r.BytesRead)
}

func beforeReadyPerRead(r Run) float64 { return float64(r.BytesBeforeReady) / bytesRead(r) }

func nodeRSS(r Run) float64 { return float64(r.NodePeakRSS()) }

func scale(xs []float64, unit float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = x / unit
	}
	return out
}

// formatSummary is "median (min-max)" with prec decimals, or "-" without samples.
func formatSummary(s Summary, prec int) string {
	if s.N == 0 || math.IsNaN(s.Median) {
		return "-"
	}
	f := func(x float64) string { return fmt.Sprintf("%.*f", prec, x) }
	if s.N == 1 {
		return f(s.Median)
	}
	return strings.Join([]string{f(s.Median), " (", f(s.Min), "-", f(s.Max), ")"}, "")
}

// writeMemoryTable prints, for the snapshotters with a daemon, the summed
// VmHWM next to the sampled peaks of the distinct resident pages, summed
// PSS and RssAnon, and the anonymous and file-backed RSS of daemon and
// hosts at the end of the run.
func (r *Report) writeMemoryTable(w io.Writer) error {
	fmt.Fprintln(w, "\nSnapshotter memory, MiB. sum VmHWM: daemon's peak + hosts' peaks (shared executable pages counted in each);")
	fmt.Fprintln(w, "peak distinct RSS: highest count of distinct resident pages of daemon + hosts at one instant (pagemap frames, a page mapped")
	fmt.Fprintln(w, "by both counted once), sampled every 100 ms: for a daemon alone (the reference) its RSS, so the two compare as is;")
	fmt.Fprintln(w, "peak PSS / peak anon: highest sum over daemon + hosts at one instant, same samples (shared pages divided);")
	fmt.Fprintln(w, "anon / file: RssAnon (heap, stacks) and RssFile (mapped executable) at the end of the run.")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tsnapshotter\tsum VmHWM\tpeak distinct RSS\tpeak PSS\tpeak anon\tdaemon anon\tdaemon file\thost anon\thost file")
	for _, wl := range r.Workloads {
		for _, sn := range r.Snapshotters {
			if sn == Overlayfs || !r.ran(wl.Name, sn) {
				continue
			}
			s := r.cell(wl.Name, sn)
			mib := func(f func(Run) int64) string {
				return s(func(x Run) float64 {
					if f(x) == 0 {
						return math.NaN()
					}
					return float64(f(x))
				}, 1<<20, 0)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", wl.Name, sn,
				mib(Run.SnapshotterPeakRSS),
				mib(func(x Run) int64 { return x.SnapshotterPeakDistinct }),
				mib(func(x Run) int64 { return x.SnapshotterPeakPSS }),
				mib(func(x Run) int64 { return x.SnapshotterPeakAnon }),
				mib(func(x Run) int64 { return x.DaemonRSSAnon }),
				mib(func(x Run) int64 { return x.DaemonRSSFile }),
				mib(func(x Run) int64 { return x.HostRSSAnon }),
				mib(func(x Run) int64 { return x.HostRSSFile }))
		}
	}
	return tw.Flush()
}
