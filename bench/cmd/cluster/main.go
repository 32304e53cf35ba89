// Command cluster simulates many nodes starting one SOCI-indexed image at
// the same moment (`make bench-cluster`): N nodes, each a containerd and
// (for soci) our daemon with roots, state and sockets of their own, pull
// and run the image from an origin registry behind one shared shaped WAN
// link, either directly or through a pull-through mirror (the distribution
// registry in proxy mode) on the unshaped cluster LAN, named to containerd's
// client and our daemon by hosts.toml. It prints per node count, path and
// snapshotter the TTR (median and slowest node), origin and mirror bytes,
// the CPU time of the nodes' processes until ready with the floor it puts
// under the TTR on this machine's cores, and writes every run to
// out/bench/cluster.json.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fastsoci/soci-snapshotter/bench"
	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/shaper"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-cluster:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	var (
		nodes    = flag.String("nodes", "1,4,8", "comma-separated node counts")
		paths    = flag.String("paths", strings.Join([]string{bench.PathDirect, bench.PathMirror, bench.PathMirrorWarm}, ","), "comma-separated paths to the origin: direct, mirror, mirror-warm")
		runs     = flag.Int("runs", 1, "cold runs per node count, path and snapshotter")
		workload = flag.String("workload", "sparse-small", "workload (bench workloads)")
		rtt      = flag.Duration("rtt", 20*time.Millisecond, "round-trip time of the shared WAN link")
		rate     = flag.Float64("rate", 200, "WAN link rate each way in Mbit/s")
		spanSize = flag.Int64("span-size", 4<<20, "SOCI span size of the image")
		out      = flag.String("out", "out/bench", "directory for cluster.json")
		keep     = flag.Bool("keep", false, "keep the work directory and every run's logs")
		timeout  = flag.Duration("run-timeout", 10*time.Minute, "limit of one cluster run")
	)
	flag.Parse()
	counts, err := parseCounts(*nodes)
	if err != nil {
		return err
	}
	pathList, err := parsePaths(*paths)
	if err != nil {
		return err
	}
	if *runs < 1 {
		return errors.New("-runs must be at least 1")
	}
	i := slices.IndexFunc(bench.Workloads(), func(w bench.Workload) bool { return w.Name == *workload })
	if i < 0 {
		return fmt.Errorf("unknown workload %q", *workload)
	}
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		return err
	}
	probe, err := buildProbe()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "soci-cluster-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(work)
	}
	fmt.Fprintf(os.Stderr, "work directory %s\n", work)
	rep, runErr := bench.ExecuteCluster(ctx, bench.ClusterConfig{
		Tools: tools, Workload: bench.Workloads()[i], NodeSets: counts, Paths: pathList, Runs: *runs,
		Link:     harness.Shaping{Mode: shaper.Shared, RTT: *rtt, RateMbit: *rate},
		SpanSize: *spanSize, WorkDir: work, KeepRuns: *keep, Probe: probe, RunTimeout: *timeout, Progress: os.Stderr,
	})
	if rep == nil {
		return runErr
	}
	fmt.Println()
	if err := rep.WriteTable(os.Stdout); err != nil {
		return err
	}
	if !rep.DropCaches {
		fmt.Println("\n(page cache not dropped: /proc/sys/vm/drop_caches is not writable here)")
	}
	path := filepath.Join(*out, "cluster.json")
	if err := rep.WriteJSON(path); err != nil {
		return err
	}
	fmt.Printf("\nwrote %s\n", path)
	var failed []error
	for _, r := range rep.Results {
		if !r.OK() {
			failed = append(failed, fmt.Errorf("run %d of N=%d %s %s failed", r.Iteration, r.Nodes, r.Path, r.Snapshotter))
		}
	}
	return errors.Join(append([]error{runErr}, failed...)...)
}

// parseCounts parses "1,4,8" into node counts (1 to 32 each).
func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 32 {
			return nil, fmt.Errorf("node count %q: want 1 to 32", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// parsePaths parses "direct,mirror" into known paths.
func parsePaths(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f != bench.PathDirect && f != bench.PathMirror && f != bench.PathMirrorWarm {
			return nil, fmt.Errorf("path %q: want direct, mirror or mirror-warm", f)
		}
		out = append(out, f)
	}
	return out, nil
}

// buildProbe builds integration/probe statically, as the integration tests do.
func buildProbe() ([]byte, error) {
	dir, err := os.MkdirTemp("", "probe")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "probe")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./integration/probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build probe (run from the repository root): %v\n%s", err, b)
	}
	return os.ReadFile(out)
}
