// Command bench compares time-to-ready of containers under overlayfs, our
// SOCI snapshotter and other soci-snapshotter-grpc builds over one or more
// shaped loopback links (`make bench`). By default the link is shared: one
// rate each way for every connection to the registry, as a node's NIC. Per
// link it prints tables of medians (min-max) and paired ratios, and writes
// every run to out/bench/results-<link>.json and a chart to
// out/bench/ttr-<link>.png.
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

type compareFlag []bench.Compare

func (c *compareFlag) String() string { return fmt.Sprint(*c) }

func (c *compareFlag) Set(v string) error {
	name, bin, ok := strings.Cut(v, "=")
	if !ok || name == "" || bin == "" {
		return errors.New("want name=/path/to/soci-snapshotter-grpc")
	}
	if name == bench.Ours || name == bench.Overlayfs {
		return fmt.Errorf("name %q is taken", name)
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(abs); err != nil {
		return err
	}
	*c = append(*c, bench.Compare{Name: name, Bin: abs})
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	var (
		compare   compareFlag
		runs      = flag.Int("runs", 5, "cold runs per workload and snapshotter")
		quick     = flag.Bool("quick", false, "one small workload, 2 runs")
		workloads = flag.String("workloads", "", "comma-separated workloads (default: "+strings.Join(bench.DefaultWorkloads(), ",")+")")
		shaping   = flag.String("shaping", string(shaper.Shared), "shared: one rate each way for all connections (a node's NIC); per-conn: a rate per TCP connection")
		rtt       = flag.Duration("rtt", 20*time.Millisecond, "round-trip time of the link")
		rate      = flag.Float64("rate", 200, "link rate each way in Mbit/s (0: unlimited)")
		unshaped  = flag.Bool("unshaped", false, "no latency or rate limit")
		matrix    = flag.Bool("matrix", false, "run on each link of "+matrixLinks+" (instead of -shaping/-rtt/-rate)")
		links     = flag.String("links", "", "comma-separated links MODE:RTT:MBIT, e.g. shared:20ms:200,per-conn:20ms:200 (instead of -shaping/-rtt/-rate)")
		spanSize  = flag.Int64("span-size", 4<<20, "SOCI span size of the workload images")
		out       = flag.String("out", "out/bench", "directory for results.json and ttr.png")
		keep      = flag.Bool("keep", false, "keep the work directory and every run's logs")
		timeout   = flag.Duration("run-timeout", 10*time.Minute, "limit of one pull and run")
		warm      = flag.Bool("warm", false, "after each cold run, run the image again on the same node once its data is local (ours: layers fully local), page cache dropped, and report that run's time to ready")
		idle      = flag.Int("idle", 0, "instead of the workloads: pull and run N small distinct images on one node with our daemon, wait until their layers are fully local, and report the idle memory of the daemon and its FUSE hosts")
		idleWait  = flag.Duration("idle-wait", 30*time.Second, "with -idle: how long the node stays idle before the second sample")
		profile   = flag.String("profile", "", "directory for the FUSE hosts' heap profiles at the end of each run (the daemons run with debug_address set)")
		extraCfg  = flag.String("daemon-config", "", "a TOML file appended to the config of every soci daemon (e.g. [fuse] passthrough = true)")
	)
	flag.Var(&compare, "compare", "name=/path/to/soci-snapshotter-grpc: another build to compare (repeatable)")
	flag.Parse()

	names := bench.DefaultWorkloads()
	if *quick {
		names = bench.QuickWorkloads()
		if !isSet("runs") {
			*runs = 2
		}
	}
	if *workloads != "" {
		names = strings.Split(*workloads, ",")
	}
	var wls []bench.Workload
	for _, n := range names {
		i := slices.IndexFunc(bench.Workloads(), func(w bench.Workload) bool { return w.Name == n })
		if i < 0 {
			return fmt.Errorf("unknown workload %q", n)
		}
		wls = append(wls, bench.Workloads()[i])
	}
	if *runs < 1 {
		return errors.New("-runs must be at least 1")
	}
	mode, err := shaper.ParseMode(*shaping)
	if err != nil {
		return err
	}
	shapings := []harness.Shaping{{Mode: mode, RTT: *rtt, RateMbit: *rate, Unshaped: *unshaped}}
	switch {
	case *links != "" && *matrix:
		return errors.New("-links and -matrix exclude each other")
	case *matrix:
		*links = matrixLinks
	}
	if *links != "" {
		if shapings, err = parseLinks(*links); err != nil {
			return err
		}
	}
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		return err
	}
	probe, err := buildProbe()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "soci-bench-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(work)
	}
	fmt.Fprintf(os.Stderr, "work directory %s\n", work)
	cfg := bench.Config{
		Tools: tools, Workloads: wls, Runs: *runs, Compare: compare, SpanSize: *spanSize,
		Links:   shapings,
		WorkDir: work, KeepRuns: *keep, DaemonConfig: bench.DefaultDaemonConfig, Probe: probe,
		RunTimeout: *timeout, Progress: os.Stderr, Warm: *warm,
	}
	if *profile != "" {
		cfg.ProfileDir = *profile
		cfg.DaemonConfig = bench.ProfileDaemonConfig + cfg.DaemonConfig // a top-level key: before any table
	}
	if *extraCfg != "" {
		extra, err := os.ReadFile(*extraCfg)
		if err != nil {
			return fmt.Errorf("-daemon-config: %w", err)
		}
		cfg.DaemonConfig += "\n" + string(extra)
	}
	if *idle > 0 {
		samples, err := bench.Idle(ctx, bench.IdleConfig{Tools: tools, Images: *idle, SpanSize: *spanSize, WorkDir: work,
			DaemonConfig: cfg.DaemonConfig, Probe: probe, Settle: *idleWait, Progress: os.Stderr})
		if len(samples) > 0 {
			if werr := bench.WriteIdleTable(os.Stdout, *idle, samples); werr != nil {
				return werr
			}
		}
		return err
	}
	reps, runErr := bench.Execute(ctx, cfg)
	var failed []error
	for _, rep := range reps {
		fmt.Println()
		if err := rep.WriteTable(os.Stdout); err != nil {
			return err
		}
		if !rep.DropCaches {
			fmt.Println("\n(page cache not dropped: /proc/sys/vm/drop_caches is not writable here)")
		}
		slug := rep.Slug
		jsonPath, chartPath := filepath.Join(*out, "results-"+slug+".json"), filepath.Join(*out, "ttr-"+slug+".png")
		if err := rep.WriteJSON(jsonPath); err != nil {
			return err
		}
		if err := rep.WriteChart(chartPath); err != nil {
			return err
		}
		fmt.Printf("\nwrote %s and %s\n", jsonPath, chartPath)
		for _, r := range rep.Results {
			if !r.OK() {
				failed = append(failed, fmt.Errorf("%s under %s run %d on %s failed: %s", r.Workload, r.Snapshotter, r.Iteration, rep.Link, r.Error))
			}
		}
	}
	return errors.Join(append([]error{runErr}, failed...)...)
}

// matrixLinks are the links of -matrix.
const matrixLinks = "shared:20ms:200,shared:50ms:100"

// parseLinks parses MODE:RTT:MBIT[,...].
func parseLinks(s string) ([]harness.Shaping, error) {
	var out []harness.Shaping
	for _, item := range strings.Split(s, ",") {
		f := strings.Split(item, ":")
		if len(f) != 3 {
			return nil, fmt.Errorf("link %q: want MODE:RTT:MBIT", item)
		}
		mode, err := shaper.ParseMode(f[0])
		if err != nil {
			return nil, fmt.Errorf("link %q: %w", item, err)
		}
		rtt, err := time.ParseDuration(f[1])
		if err != nil || rtt < 0 {
			return nil, fmt.Errorf("link %q: bad RTT %q", item, f[1])
		}
		rate, err := strconv.ParseFloat(f[2], 64)
		if err != nil || rate < 0 {
			return nil, fmt.Errorf("link %q: bad rate %q", item, f[2])
		}
		out = append(out, harness.Shaping{Mode: mode, RTT: rtt, RateMbit: rate})
	}
	return out, nil
}

func isSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
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
