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

// WriteTable prints, per workload and snapshotter, medians (min-max) of every
// measure, then per workload the paired TTR ratios of ours to overlayfs and
// to each other snapshotter.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "link: %s (bandwidth per TCP connection); span size %d; %d cold runs per workload and snapshotter; medians (min-max)\n\n",
		r.Link, r.SpanSize, r.Runs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tsnapshotter\tok\tTTR s\tpull s\trun s\tMB before ready\tMB total\tdaemon peak RSS MB\tdaemon CPU s\tfully local")
	for _, wl := range r.Workloads {
		for _, sn := range r.Snapshotters {
			ok := 0
			for _, run := range r.Results {
				if run.Workload == wl.Name && run.Snapshotter == sn && run.OK() {
					ok++
				}
			}
			s := func(f func(Run) float64, unit float64, prec int) string {
				return formatSummary(Summarize(scale(r.series(wl.Name, sn, f), unit)), prec)
			}
			rss, cpu := "-", "-"
			if sn != Overlayfs {
				rss = s(func(x Run) float64 { return float64(x.DaemonPeakRSS) }, 1<<20, 0)
				cpu = s(func(x Run) float64 { return x.DaemonCPUSeconds }, 1, 2)
			}
			local := "n/a"
			if vals := r.series(wl.Name, sn, fullyLocal); slices.ContainsFunc(vals, func(v float64) bool { return !math.IsNaN(v) }) {
				local = formatSummary(Summarize(vals), 2) + " s"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", wl.Name, sn, ok, r.Runs,
				s(ttr, 1, 2),
				s(func(x Run) float64 { return x.PullSeconds }, 1, 2),
				s(func(x Run) float64 { return x.RunSeconds }, 1, 2),
				s(func(x Run) float64 { return float64(x.BytesBeforeReady) }, 1e6, 1),
				s(func(x Run) float64 { return float64(x.BytesTotal) }, 1e6, 1),
				rss, cpu, local)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nTTR ratios, paired run by run (lower is better for the first named):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tratio\tmedian (min-max)\tpairs")
	for _, wl := range r.Workloads {
		ours := r.series(wl.Name, Ours, ttr)
		for _, other := range r.Snapshotters {
			if other == Ours {
				continue
			}
			s := Summarize(PairedRatios(ours, r.series(wl.Name, other, ttr)))
			fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%d\n", wl.Name, Ours, other, formatSummary(s, 3), s.N)
		}
	}
	return tw.Flush()
}

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
