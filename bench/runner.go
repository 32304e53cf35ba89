package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/shaper"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// Compare is another soci-snapshotter-grpc build to run side by side.
type Compare struct {
	Name string // as shown in the report
	Bin  string // path of its soci-snapshotter-grpc
}

// Config says what to run.
type Config struct {
	Tools     harness.Tools
	Workloads []Workload
	Runs      int
	// Links are the modelled links; every workload runs on each, and each
	// gives a report of its own.
	Links    []harness.Shaping
	Compare  []Compare
	SpanSize int64
	// WorkDir holds the registry and one directory per run (removed after
	// the run unless it failed or KeepRuns).
	WorkDir  string
	KeepRuns bool
	// DaemonConfig is the config.toml of every soci daemon.
	DaemonConfig string
	Probe        []byte
	RunTimeout   time.Duration
	// ProfileDir, when set, receives each FUSE host's heap profile at the
	// end of every run of ours (the daemons run with ProfileDaemonConfig).
	ProfileDir string
	// Warm adds a second run of each image on the same node once its
	// data is local (Run.WarmRunSeconds).
	Warm bool
	// Progress gets one line per step.
	Progress io.Writer
}

// DefaultDaemonConfig is the config every soci daemon runs with.
const DefaultDaemonConfig = `
[pull_modes.soci_v1]
  enable = false
`

// snapshotter is one column of the comparison.
type snapshotter struct {
	name   string // in the report
	plugin string // containerd's snapshotter name
	bin    string // daemon binary; "" for overlayfs
}

// Execute builds and pushes the workloads once, then on each link runs
// every workload cold Runs times per snapshotter, interleaved (A B A B), and
// returns one report per link (those finished when ctx ends early).
func Execute(ctx context.Context, cfg Config) ([]*Report, error) {
	snaps := []snapshotter{{Overlayfs, "overlayfs", ""}, {Ours, "soci", filepath.Join(cfg.Tools.Ours, "soci-snapshotter-grpc")}}
	for _, c := range cfg.Compare {
		// Every run has a containerd of its own with one proxy snapshotter,
		// so each daemon is registered as "soci": nerdctl maps any name
		// containing "soci" to exactly that plugin name when it pulls.
		snaps = append(snaps, snapshotter{c.Name, "soci", c.Bin})
	}
	reg, err := harness.StartRegistry(ctx, filepath.Join(cfg.Tools.Bin, "registry"), filepath.Join(cfg.WorkDir, "registry"))
	if err != nil {
		return nil, err
	}
	defer reg.Stop()
	var infos []WorkloadInfo
	for _, wl := range cfg.Workloads {
		info, err := prepare(ctx, cfg, reg.Host, wl)
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
	var reports []*Report
	for li, shaping := range cfg.Links {
		fmt.Fprintf(cfg.Progress, "link %d/%d: %s\n", li+1, len(cfg.Links), shaping)
		rep, err := executeOnLink(ctx, cfg, reg.Host, shaping, snaps, infos)
		if rep != nil {
			reports = append(reports, rep)
		}
		if err != nil {
			return reports, err
		}
	}
	return reports, nil
}

// executeOnLink runs every workload on one link.
func executeOnLink(ctx context.Context, cfg Config, registry string, shaping harness.Shaping, snaps []snapshotter, infos []WorkloadInfo) (*Report, error) {
	rep := &Report{Started: time.Now(), Link: shaping.String(), Shaping: shapingInfo(shaping), Slug: shaping.Slug(), Runs: cfg.Runs,
		SpanSize: cfg.SpanSize, Binaries: map[string]string{}}
	for _, s := range snaps {
		rep.Snapshotters = append(rep.Snapshotters, s.name)
		if s.bin != "" {
			rep.Binaries[s.name] = s.bin
		}
	}
	link, err := harness.NewShapedLink(registry, shaping)
	if err != nil {
		return nil, err
	}
	defer link.Close()
	total, done := 0, 0
	for _, info := range infos {
		info.Ref = link.Addr + "/" + info.Repo
		if info.PrefetchRepo != "" {
			info.PrefetchRef = link.Addr + "/" + info.PrefetchRepo
			for _, c := range columns(info, snaps) {
				if !slices.Contains(rep.Snapshotters, c.name) {
					rep.Snapshotters = append(rep.Snapshotters, c.name)
				}
			}
		}
		rep.Workloads = append(rep.Workloads, info)
		total += cfg.Runs * len(columns(info, snaps))
	}
	for _, info := range rep.Workloads {
		for i := 0; i < cfg.Runs; i++ {
			for _, c := range rotate(columns(info, snaps), i) {
				done++
				run := runOnce(ctx, cfg, link, c.snapshotter, c.daemonConfig(cfg), info.Name, c.ref, i, &rep.DropCaches)
				rep.Results = append(rep.Results, run)
				fmt.Fprintf(cfg.Progress, "[%d/%d] %s\n", done, total, describe(run))
				if ctx.Err() != nil {
					return rep, ctx.Err()
				}
			}
		}
	}
	return rep, nil
}

// rotate returns the columns of round i in the order the round runs them:
// rotated left by i, so that no snapshotter always runs right after the
// same one. The run right after overlayfs's pull of a large image was
// measured slower (sparse-1g, two builds of ours swapped: 1.209 against
// 1.057), likely because the file system frees the removed unpacked layers
// in the background (online discard); a fixed order charged that to one
// column every time. Ratios pair runs by round, whatever the order.
func rotate(cols []column, i int) []column {
	if len(cols) == 0 {
		return cols
	}
	k := i % len(cols)
	return append(slices.Clone(cols[k:]), cols[:k]...)
}

// column is one snapshotter running one image of a workload.
type column struct {
	snapshotter
	ref      string
	prefetch bool // [prefetch] enable
}

func (c column) daemonConfig(cfg Config) string {
	if c.prefetch {
		return cfg.DaemonConfig + PrefetchDaemonConfig
	}
	return cfg.DaemonConfig
}

// columns are the runs of one iteration of a workload: every snapshotter
// on its image, or, for a Prefetch workload, ours with [prefetch] enable
// on the image without and with its recorded prefetch artifact, and each
// --compare build with the artifact (named <name>+prefetch).
func columns(info WorkloadInfo, snaps []snapshotter) []column {
	if info.PrefetchRef == "" {
		out := make([]column, len(snaps))
		for i, s := range snaps {
			out[i] = column{snapshotter: s, ref: info.Ref}
		}
		return out
	}
	ours := snaps[slices.IndexFunc(snaps, func(s snapshotter) bool { return s.name == Ours })]
	withArtifact := ours
	withArtifact.name = OursPrefetch
	out := []column{{ours, info.Ref, true}, {withArtifact, info.PrefetchRef, true}}
	for _, s := range snaps {
		if s.bin != "" && s.name != Ours {
			s.name += "+prefetch"
			out = append(out, column{s, info.PrefetchRef, true})
		}
	}
	return out
}

func shapingInfo(s harness.Shaping) ShapingInfo {
	if !s.Shaped() {
		return ShapingInfo{Mode: "unshaped"}
	}
	mode := string(s.Mode)
	if mode == "" {
		mode = string(shaper.Shared)
	}
	return ShapingInfo{Mode: mode, RTTMs: float64(s.RTT) / float64(time.Millisecond), RateMbit: s.RateMbit}
}

func describe(r Run) string {
	head := fmt.Sprintf("%-21s %-13s #%d", r.Workload, r.Snapshotter, r.Iteration)
	if !r.OK() {
		return head + " FAILED: " + firstLine(r.Error)
	}
	return fmt.Sprintf("%s TTR %.2fs (pull %.2fs, run %.2fs), %.1f MB before ready, %.1f MB total, %.1f MB read, %.1f MB prefetched, %d connections, "+
		"snapshotter %.0f MB (peak distinct RSS %.0f MB, PSS %.0f MB, anon %.0f MB) %.2f CPU s (%d hosts), containerd %.0f MB %.2f CPU s, nerdctl %.2f CPU s", head,
		r.TTRSeconds, r.PullSeconds, r.RunSeconds, float64(r.BytesBeforeReady)/1e6, float64(r.BytesTotal)/1e6, float64(r.BytesRead)/1e6, float64(r.PrefetchedBytes)/1e6, r.Connections,
		float64(r.SnapshotterPeakRSS())/(1<<20), float64(r.SnapshotterPeakDistinct)/(1<<20), float64(r.SnapshotterPeakPSS)/(1<<20), float64(r.SnapshotterPeakAnon)/(1<<20),
		r.SnapshotterCPUSeconds(), r.Hosts,
		float64(r.ContainerdPeakRSS)/(1<<20), r.ContainerdCPUSeconds, r.ClientCPUSeconds) + warmText(r)
}

func warmText(r Run) string {
	if r.WarmRunSeconds == nil {
		return ""
	}
	return fmt.Sprintf(", warm run %.3fs", *r.WarmRunSeconds)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// prepare builds a workload's image, indexes it as SOCI v2 and pushes it
// straight to the registry (unshaped). Runs pull it through a link.
// The index is built in process by integration/sociimage, not by `soci
// convert`: that needs the image in containerd or an OCI layout first, and
// the bench measures the snapshotter, not the indexer; `soci convert` is
// covered by the integration tests TestCLIConvert and
// TestCLIConvertStandalone.
func prepare(ctx context.Context, cfg Config, registry string, wl Workload) (WorkloadInfo, error) {
	start := time.Now()
	fmt.Fprintf(cfg.Progress, "building %s: %s\n", wl.Name, wl.Description)
	img, err := image.Build(wl.Spec(cfg.Probe))
	if err != nil {
		return WorkloadInfo{}, fmt.Errorf("build workload %s: %w", wl.Name, err)
	}
	repo := "bench/" + strings.ReplaceAll(wl.Name, "+", "-") + ":latest" // "+" is not allowed in a repository name
	pctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	var prefetchRepo string
	switch {
	case wl.Prefetch:
		progress := func(format string, args ...any) { fmt.Fprintf(cfg.Progress, format+"\n", args...) }
		if prefetchRepo, err = recordPrefetch(pctx, cfg, registry, repo, img, progress); err != nil {
			return WorkloadInfo{}, fmt.Errorf("record prefetch of workload %s: %w", wl.Name, err)
		}
	case wl.Plain:
		err = image.Push(pctx, registry+"/"+repo, img)
	default:
		_, _, err = sociimage.PushV2(pctx, registry+"/"+repo, img, sociimage.Options{SpanSize: cfg.SpanSize})
	}
	if err != nil {
		return WorkloadInfo{}, fmt.Errorf("push workload %s: %w", wl.Name, err)
	}
	info := WorkloadInfo{Name: wl.Name, Description: wl.Description, Layers: len(img.LayerDescs), Repo: repo,
		PrefetchRepo: prefetchRepo, BuildSeconds: time.Since(start).Seconds()}
	for _, d := range img.LayerDescs {
		info.CompressedBytes += d.Size
		info.LayerDigests = append(info.LayerDigests, d.Digest.String())
	}
	img = nil
	debug.FreeOSMemory()
	fmt.Fprintf(cfg.Progress, "pushed %s: %d layers, %.1f MB compressed, in %.1fs\n", wl.Name, info.Layers,
		float64(info.CompressedBytes)/1e6, info.BuildSeconds)
	return info, nil
}

// node is containerd (and a daemon) started fresh for one run.
type node struct {
	env    *harness.Env
	daemon *harness.Daemon
}

// workloadConfig is what the workload adds to the daemons' configuration.
func workloadConfig(cfg Config, name string) string {
	for _, wl := range cfg.Workloads {
		if wl.Name == name {
			return wl.DaemonConfig
		}
	}
	return ""
}

func startNode(ctx context.Context, cfg Config, dir string, s snapshotter, daemonConfig string) (*node, error) {
	for _, sub := range []string{"daemon", "containerd", "nerdctl"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("create %s dir: %w", sub, err)
		}
	}
	n := &node{env: &harness.Env{Dir: dir, Tools: cfg.Tools, Namespace: "bench"}}
	var proxies []harness.ProxySnapshotter
	if s.bin != "" {
		d, err := harness.NewDaemon(s.bin, filepath.Join(dir, "daemon"), daemonConfig)
		if err != nil {
			return nil, err
		}
		if err := d.Start(ctx); err != nil {
			return nil, err
		}
		n.daemon, n.env.Daemon = d, d
		proxies = append(proxies, harness.ProxySnapshotter{Name: s.plugin, Address: d.Address})
	}
	c, err := harness.StartContainerdProxies(ctx, cfg.Tools.Bin, filepath.Join(dir, "containerd"), "info", proxies)
	if err != nil {
		n.env.Close()
		return nil, err
	}
	n.env.Containerd = c
	return n, nil
}

// runOnce is one cold pull and run: a fresh containerd and daemon with empty
// roots, page cache dropped when possible, pull, then run to "ready".
// r is a named result so that the deferred stop can still fail the run.
func runOnce(ctx context.Context, cfg Config, link *harness.ShapedLink, s snapshotter, daemonConfig, workload, ref string, i int, dropped *bool) (r Run) {
	r = Run{Workload: workload, Snapshotter: s.name, Iteration: i}
	dir := filepath.Join(cfg.WorkDir, "runs", fmt.Sprintf("%s-%s-%d", workload, s.name, i))
	rctx, cancel := context.WithTimeout(ctx, cfg.RunTimeout)
	defer cancel()
	n, err := startNode(rctx, cfg, dir, s, daemonConfig+workloadConfig(cfg, workload))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer func() {
		if err := stopNode(n); err != nil && r.Error == "" {
			r.Error = "stop node: " + err.Error()
		}
		if r.OK() && !cfg.KeepRuns {
			_ = os.RemoveAll(dir)
		}
	}()
	*dropped = dropCaches()
	var sampler *memSampler
	if n.daemon != nil {
		sampler = startMemSampler(snapshotterPids(n.daemon))
	}
	err = measure(rctx, n, link, s.plugin, ref, &r)
	if sampler != nil {
		peak := sampler.Stop()
		r.SnapshotterPeakPSS, r.SnapshotterPeakAnon, r.SnapshotterPeakDistinct = peak.pss, peak.anon, peak.distinct
	}
	if err != nil {
		r.Error = err.Error()
		if n.daemon != nil {
			r.Error += "\ndaemon log (" + n.daemon.Log() + "):\n" + n.daemon.LogTail(20)
		}
		return r
	}
	if r.BytesRead > 0 {
		// The probe binary is read from the image too (exec).
		r.BytesRead += int64(len(cfg.Probe))
	}
	if n.daemon != nil {
		if b, err := prefetchedBytes(n.daemon.Log()); err == nil {
			r.PrefetchedBytes = b
		}
	}
	if err := readResources(n, &r); err != nil {
		r.Error = err.Error()
		return r
	}
	if cfg.ProfileDir != "" && n.daemon != nil {
		name := fmt.Sprintf("%s-%s-%d", workload, s.name, i)
		if err := dumpHostProfiles(rctx, cfg.ProfileDir, name, n.daemon); err != nil {
			fmt.Fprintf(cfg.Progress, "%s: %v\n", name, err)
		}
	}
	// Resources are those of the cold run; the warm run comes after.
	if cfg.Warm {
		if err := measureWarm(rctx, n, s.plugin, ref, &r); err != nil {
			r.Error = "warm run: " + err.Error()
		}
	}
	return r
}

// readResources records the peak RSS and CPU time of containerd, the
// daemon and the daemon's FUSE hosts, which are all still running.
func readResources(n *node, r *Run) error {
	st, err := harness.ReadProcStats(n.env.Containerd.Pid())
	if err != nil {
		return fmt.Errorf("resource use of containerd: %w", err)
	}
	r.ContainerdPeakRSS, r.ContainerdCPUSeconds = st.PeakRSS, st.CPUSeconds
	if n.daemon == nil {
		return nil
	}
	if st, err = harness.ReadProcStats(n.daemon.Pid()); err != nil {
		return fmt.Errorf("resource use of the daemon: %w", err)
	}
	r.DaemonPeakRSS, r.DaemonCPUSeconds = st.PeakRSS, st.CPUSeconds
	m, err := harness.ReadProcMem(n.daemon.Pid())
	if err != nil {
		return fmt.Errorf("memory of the daemon: %w", err)
	}
	r.DaemonRSSAnon, r.DaemonRSSFile = m.RSSAnon, m.RSSFile
	for _, pid := range n.daemon.HostPids() {
		st, err := harness.ReadProcStats(pid)
		if err != nil {
			return fmt.Errorf("resource use of the FUSE host: %w", err)
		}
		r.Hosts++
		r.HostPeakRSS += st.PeakRSS
		r.HostCPUSeconds += st.CPUSeconds
		m, err := harness.ReadProcMem(pid)
		if err != nil {
			return fmt.Errorf("memory of the FUSE host: %w", err)
		}
		r.HostRSSAnon += m.RSSAnon
		r.HostRSSFile += m.RSSFile
	}
	return nil
}

// snapshotterPids lists the daemon and its FUSE hosts for a memSampler;
// the hosts are listed anew (a scan of /proc) once a second.
func snapshotterPids(d *harness.Daemon) func() []int {
	var hosts []int
	var listed time.Time
	return func() []int {
		if time.Since(listed) >= time.Second {
			hosts, listed = d.HostPids(), time.Now()
		}
		return append([]int{d.Pid()}, hosts...)
	}
}

// stopNode stops containerd and the daemon, then the daemon's FUSE hosts
// (`cleanup` on its root), so that the next run starts cold. A host still
// running 5 s after that is killed and reported: it would leak across runs.
func stopNode(n *node) error {
	err := n.env.Close()
	if n.daemon == nil {
		return err
	}
	// A host that logged its exit may still be on its way out on a busy
	// machine: give it a moment before calling it a leak.
	for deadline := time.Now().Add(5 * time.Second); len(n.daemon.HostPids()) > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if pids := n.daemon.HostPids(); len(pids) > 0 {
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		err = errors.Join(err, fmt.Errorf("FUSE hosts %v still ran after the daemon's cleanup (killed)", pids))
	}
	return err
}

// waitsFullyLocal says whether a run of snapshotter waits for its layers
// to be fully local: only our daemon logs that, and a --compare build may
// be another snapshotter (the reference), whose wait would only end at the
// run's bound; in a Prefetch workload it runs as "<name>+prefetch".
func waitsFullyLocal(snapshotter string) bool {
	return snapshotter == Ours || snapshotter == OursPrefetch
}

// measure pulls ref and runs it until the container prints "ready" and exits.
func measure(ctx context.Context, n *node, link *harness.ShapedLink, plugin, ref string, r *Run) error {
	base, conns := link.Served(), link.Connections()
	start := time.Now()
	pull := nerdctlCmd(ctx, n.env, "--snapshotter", plugin, "pull", "--quiet", ref)
	if out, err := pull.CombinedOutput(); err != nil {
		return fmt.Errorf("pull: %w\n%s", err, out)
	}
	pulled := time.Now()
	addClientUsage(r, pull.ProcessState)
	cmd := nerdctlCmd(ctx, n.env, "--snapshotter", plugin, "run", "--rm", "--net", "none", ref)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start nerdctl run: %w", err)
	}
	var ready time.Time
	var lines []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if ready.IsZero() && strings.TrimSpace(line) == "ready" {
			ready = time.Now()
			r.BytesBeforeReady = link.Served() - base
		}
		if len(lines) < 50 {
			lines = append(lines, line)
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("nerdctl run: %w\n%s%s", err, strings.Join(lines, "\n"), stderr.String())
	}
	addClientUsage(r, cmd.ProcessState)
	r.BytesTotal = link.Served() - base
	r.Connections = link.Connections() - conns
	r.BytesRead = probeBytesRead(lines)
	if ready.IsZero() {
		return errors.New("container exited without printing ready:\n" + strings.Join(lines, "\n"))
	}
	r.PullSeconds = pulled.Sub(start).Seconds()
	r.RunSeconds = ready.Sub(pulled).Seconds()
	r.TTRSeconds = ready.Sub(start).Seconds()
	if n.daemon != nil && waitsFullyLocal(r.Snapshotter) {
		if local, ok := waitFullyLocal(ctx, n.daemon); ok {
			secs := local.Sub(ready).Seconds()
			r.FullyLocalSeconds = &secs
		}
		r.BytesTotal = link.Served() - base
	}
	return nil
}

// measureWarm runs ref a second time on the node of a finished cold run,
// with the page cache dropped first, and records the time to "ready".
func measureWarm(ctx context.Context, n *node, plugin, ref string, r *Run) error {
	dropCaches()
	cmd := nerdctlCmd(ctx, n.env, "--snapshotter", plugin, "run", "--rm", "--net", "none", ref)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start nerdctl run: %w", err)
	}
	var ready time.Time
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if ready.IsZero() && strings.TrimSpace(sc.Text()) == "ready" {
			ready = time.Now()
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("nerdctl run: %w\n%s", err, stderr.String())
	}
	if ready.IsZero() {
		return errors.New("container exited without printing ready")
	}
	secs := ready.Sub(start).Seconds()
	r.WarmRunSeconds = &secs
	return nil
}

// addClientUsage adds the CPU time of a finished nerdctl to the run's and
// keeps the larger peak RSS.
func addClientUsage(r *Run, ps *os.ProcessState) {
	if ps == nil {
		return
	}
	r.ClientCPUSeconds += (ps.UserTime() + ps.SystemTime()).Seconds()
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		r.ClientPeakRSS = max(r.ClientPeakRSS, ru.Maxrss<<10) // Maxrss is in KiB on Linux
	}
}

// waitFullyLocal waits until the daemon has logged every lazily mounted
// layer as fully local and returns when it saw that; ok is false when the
// daemon mounted nothing lazily, does not fetch in the background ([background_fetch]
// disable in its config: nothing would end the wait but the run's bound), or did
// not finish within the run's bound.
func waitFullyLocal(ctx context.Context, d *harness.Daemon) (time.Time, bool) {
	if !walks(d.Config) {
		return time.Time{}, false
	}
	mounts, err := harness.Mounts(d.Root)
	if err != nil {
		return time.Time{}, false
	}
	lazy := 0
	for _, typ := range mounts {
		if typ == "fuse.rawBridge" {
			lazy++
		}
	}
	if lazy == 0 {
		return time.Time{}, false
	}
	for {
		if data, err := os.ReadFile(d.Log()); err == nil && strings.Count(string(data), "layer fully local") >= lazy {
			return time.Now(), true
		}
		select {
		case <-ctx.Done():
			return time.Time{}, false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// walks reports whether the daemon whose config file is path makes its
// layers fully local in the background; a file it cannot read or parse
// counts as yes (the wait is bounded by the run's context anyway).
func walks(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return true
	}
	c, err := config.Parse(data)
	return err != nil || !c.BackgroundFetch.Disable
}

// nerdctlCmd is Env.Nerdctl as a command whose output can be streamed.
func nerdctlCmd(ctx context.Context, e *harness.Env, args ...string) *exec.Cmd {
	base := []string{
		"--address", e.Containerd.Address, "--namespace", e.Namespace,
		"--data-root", filepath.Join(e.Dir, "nerdctl"), "--cgroup-manager", "cgroupfs",
		"--insecure-registry",
	}
	cmd := exec.CommandContext(ctx, filepath.Join(e.Tools.Bin, "nerdctl"), append(base, args...)...)
	nerdctlToml := filepath.Join(e.Dir, "nerdctl", "nerdctl.toml")
	_ = os.WriteFile(nerdctlToml, nil, 0o644)
	cmd.Env = append(os.Environ(),
		"PATH="+e.Tools.Ours+":"+e.Tools.Bin+":"+os.Getenv("PATH"),
		"NERDCTL_TOML="+nerdctlToml)
	return cmd
}

// dropCaches drops the page cache when /proc/sys/vm/drop_caches is writable.
func dropCaches() bool {
	_ = exec.Command("sync").Run()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200) == nil
}
