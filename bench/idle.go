package bench

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// IdleConfig says how to measure the snapshotter at rest (Idle).
type IdleConfig struct {
	Tools harness.Tools
	// Images is how many small distinct images are pulled and run.
	Images   int
	SpanSize int64
	WorkDir  string
	// DaemonConfig is the daemon's config.toml.
	DaemonConfig string
	Probe        []byte
	// Settle is how long the node stays idle after the last layer became
	// local before the second sample.
	Settle   time.Duration
	Progress io.Writer
}

// IdleSample is the memory of the daemon and its FUSE hosts (summed) at one
// instant, in bytes.
type IdleSample struct {
	At    string // what had happened
	Hosts int
	// Distinct is the resident pages of the daemon and hosts together,
	// each counted once (pagemap frames): their RSS taken together.
	Distinct                                     int64
	DaemonPSS, DaemonAnon, DaemonFile, DaemonHWM int64
	HostPSS, HostAnon, HostFile, HostHWM         int64
}

// Idle pulls and runs cfg.Images small distinct images (each its own
// layer of 200 files over a shared base layer) on one node with our
// daemon, through an unshaped link, waits until every lazily mounted layer
// is fully local (the background fetch is over), and samples the memory of
// the daemon and its hosts then and again after cfg.Settle of idleness.
func Idle(ctx context.Context, cfg IdleConfig) ([]IdleSample, error) {
	reg, err := harness.StartRegistry(ctx, filepath.Join(cfg.Tools.Bin, "registry"), filepath.Join(cfg.WorkDir, "registry"))
	if err != nil {
		return nil, err
	}
	defer reg.Stop()
	var refs []string
	for i := 0; i < cfg.Images; i++ {
		ref := fmt.Sprintf("%s/bench/idle-%d:latest", reg.Host, i)
		img, err := image.Build(idleSpec(cfg.Probe, i))
		if err != nil {
			return nil, fmt.Errorf("build idle image %d: %w", i, err)
		}
		if _, _, err := sociimage.PushV2(ctx, ref, img, sociimage.Options{SpanSize: cfg.SpanSize}); err != nil {
			return nil, fmt.Errorf("push idle image %d: %w", i, err)
		}
		refs = append(refs, ref)
	}
	fmt.Fprintf(cfg.Progress, "pushed %d idle images\n", len(refs))
	// As cold runs do: without it the executable's pages that happen to
	// be cached (a fresh build is) are mapped around each fault, and the
	// file-backed RSS depends on what ran before.
	dropCaches()
	s := snapshotter{Ours, "soci", filepath.Join(cfg.Tools.Ours, "soci-snapshotter-grpc")}
	n, err := startNode(ctx, Config{Tools: cfg.Tools}, filepath.Join(cfg.WorkDir, "idle"), s, cfg.DaemonConfig)
	if err != nil {
		return nil, err
	}
	defer func() { _ = stopNode(n) }()
	for i, ref := range refs {
		for _, args := range [][]string{{"pull", "--quiet", ref}, {"run", "--rm", "--net", "none", ref}} {
			cmd := nerdctlCmd(ctx, n.env, append([]string{"--snapshotter", s.plugin}, args...)...)
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("%s image %d: %w\n%s", args[0], i, err, out)
			}
		}
	}
	fmt.Fprintf(cfg.Progress, "ran %d images; waiting for their layers to be fully local\n", len(refs))
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if _, ok := waitFullyLocal(wctx, n.daemon); !ok {
		return nil, fmt.Errorf("no layer mounted lazily, or not all fully local within 10 minutes (log %s): %v", n.daemon.Log(), wctx.Err())
	}
	var out []IdleSample
	first, err := sampleIdle(n.daemon, "layers fully local")
	if err != nil {
		return nil, err
	}
	out = append(out, first)
	fmt.Fprintf(cfg.Progress, "idle for %s\n", cfg.Settle)
	select {
	case <-ctx.Done():
		return out, ctx.Err()
	case <-time.After(cfg.Settle):
	}
	later, err := sampleIdle(n.daemon, fmt.Sprintf("%s later", cfg.Settle))
	if err != nil {
		return out, err
	}
	return append(out, later), nil
}

// idleSpec is image i of Idle: 200 files of 2-10 KiB and one of 1 MiB,
// distinct per image, in a layer over the shared base holding the probe,
// which stats them all and prints ready.
func idleSpec(probe []byte, i int) image.Spec {
	d := fmt.Sprintf("app%d", i)
	entries := []image.Entry{dir(d)}
	for f := 0; f < 200; f++ {
		entries = append(entries, image.Entry{Name: fmt.Sprintf("%s/f%03d", d, f), Type: tar.TypeReg, Mode: 0o644,
			ModTime: time.Unix(epochSeconds, 0), Size: int64(2048 + f*41%8192), Seed: int64(i*10_000 + f)})
	}
	entries = append(entries, image.Entry{Name: d + "/big", Type: tar.TypeReg, Mode: 0o644,
		ModTime: time.Unix(epochSeconds, 0), Size: 1 << 20, Seed: int64(i*10_000 + 9999)})
	return spec(probe, []image.Layer{{Entries: entries}}, "stat-all", "/"+d, "--", "ready")
}

func sampleIdle(d *harness.Daemon, at string) (IdleSample, error) {
	s := IdleSample{At: at}
	read := func(pid int, pss, anon, file, hwm *int64) error {
		m, err := harness.ReadProcMem(pid)
		if err != nil {
			return err
		}
		st, err := harness.ReadProcStats(pid)
		if err != nil {
			return err
		}
		*pss += m.PSS
		*anon += m.RSSAnon
		*file += m.RSSFile
		*hwm += st.PeakRSS
		return nil
	}
	if err := read(d.Pid(), &s.DaemonPSS, &s.DaemonAnon, &s.DaemonFile, &s.DaemonHWM); err != nil {
		return s, fmt.Errorf("memory of the daemon: %w", err)
	}
	hosts := d.HostPids()
	for _, pid := range hosts {
		if err := read(pid, &s.HostPSS, &s.HostAnon, &s.HostFile, &s.HostHWM); err != nil {
			return s, fmt.Errorf("memory of FUSE host %d: %w", pid, err)
		}
		s.Hosts++
	}
	var set harness.PageSet
	distinct, skipped, err := harness.DistinctResidentBytes(&set, append([]int{d.Pid()}, hosts...))
	if err != nil || len(skipped) > 0 {
		return s, fmt.Errorf("distinct resident pages (skipped %v): %w", skipped, err)
	}
	s.Distinct = distinct
	return s, nil
}

// WriteIdleTable prints the samples of Idle in MiB.
func WriteIdleTable(w io.Writer, images int, samples []IdleSample) error {
	fmt.Fprintf(w, "\nIdle memory, MiB, %d images pulled and run, daemon + FUSE hosts. RSS: distinct resident pages of\n", images)
	fmt.Fprintln(w, "daemon + hosts (pagemap frames, a page mapped by several counted once: for one process its RSS);")
	fmt.Fprintln(w, "RSS sum = anon + file summed over the processes (shared pages counted in each);")
	fmt.Fprintln(w, "anon: RssAnon (heap, stacks); file: RssFile (mapped executable, shared by the two processes);")
	fmt.Fprintln(w, "PSS: shared pages divided among the processes mapping them; VmHWM: peak RSS of each process since its start.")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "when\thosts\tRSS\tRSS sum\tPSS sum\tdaemon anon\tdaemon file\thost anon\thost file\tdaemon PSS\thost PSS\tVmHWM sum")
	mib := func(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }
	for _, s := range samples {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.At, s.Hosts, mib(s.Distinct),
			mib(s.DaemonAnon+s.DaemonFile+s.HostAnon+s.HostFile), mib(s.DaemonPSS+s.HostPSS),
			mib(s.DaemonAnon), mib(s.DaemonFile), mib(s.HostAnon), mib(s.HostFile),
			mib(s.DaemonPSS), mib(s.HostPSS), mib(s.DaemonHWM+s.HostHWM))
	}
	return tw.Flush()
}
