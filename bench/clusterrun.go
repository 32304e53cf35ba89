package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
)

// ClusterConfig says what a cluster bench runs.
type ClusterConfig struct {
	Tools    harness.Tools
	Workload Workload
	// NodeSets are the node counts, each run with every path and snapshotter.
	NodeSets []int
	Runs     int
	// Paths are PathDirect, PathMirror, PathMirrorWarm, in run order.
	Paths []string
	// Link is the shared WAN link between the cluster and the origin.
	Link       harness.Shaping
	SpanSize   int64
	WorkDir    string
	KeepRuns   bool
	Probe      []byte
	RunTimeout time.Duration
	Progress   io.Writer
}

// ExecuteCluster pushes the workload to an origin registry once, puts the
// shared shaped link in front of it, then for every run, node count, path
// (direct, mirror) and snapshotter (overlayfs, ours) starts that many fresh
// nodes, starts the image on all of them at once, and measures. Every run
// is cold: fresh nodes, a fresh mirror, page cache dropped when possible.
func ExecuteCluster(ctx context.Context, cfg ClusterConfig) (*ClusterReport, error) {
	origin, err := harness.StartRegistry(ctx, filepath.Join(cfg.Tools.Bin, "registry"), filepath.Join(cfg.WorkDir, "origin"))
	if err != nil {
		return nil, err
	}
	defer origin.Stop()
	info, err := prepare(ctx, Config{Tools: cfg.Tools, SpanSize: cfg.SpanSize, Probe: cfg.Probe, Progress: cfg.Progress}, origin.Host, cfg.Workload)
	if err != nil {
		return nil, err
	}
	link, err := harness.NewShapedLink(origin.Host, cfg.Link)
	if err != nil {
		return nil, err
	}
	defer link.Close()
	info.Ref = link.Addr + "/" + info.Repo
	rep := &ClusterReport{Started: time.Now(), Link: cfg.Link.String(), Shaping: shapingInfo(cfg.Link), Workload: info,
		Runs: cfg.Runs, NodeSets: cfg.NodeSets, Cores: runtime.NumCPU()}
	snaps := []snapshotter{{Overlayfs, "overlayfs", ""}, {Ours, "soci", filepath.Join(cfg.Tools.Ours, "soci-snapshotter-grpc")}}
	total := cfg.Runs * len(cfg.NodeSets) * len(cfg.Paths) * len(snaps)
	done := 0
	for i := 0; i < cfg.Runs; i++ {
		for _, n := range cfg.NodeSets {
			for _, path := range cfg.Paths {
				for _, s := range snaps {
					done++
					run := runCluster(ctx, cfg, clusterTarget{origin: origin, link: link, info: info}, n, path, s, i, &rep.DropCaches)
					rep.Results = append(rep.Results, run)
					fmt.Fprintf(cfg.Progress, "[%d/%d] %s\n", done, total, describeCluster(run))
					if ctx.Err() != nil {
						return rep, ctx.Err()
					}
				}
			}
		}
	}
	return rep, nil
}

// clusterTarget is what every run pulls from.
type clusterTarget struct {
	origin *harness.Registry
	link   *harness.ShapedLink
	info   WorkloadInfo
}

func describeCluster(r ClusterRun) string {
	head := fmt.Sprintf("N=%d %-6s %-9s #%d", r.Nodes, r.Path, r.Snapshotter, r.Iteration)
	if r.Error != "" {
		return head + " FAILED: " + firstLine(r.Error)
	}
	s := Summarize(r.TTRs())
	line := fmt.Sprintf("%s TTR med %.2fs max %.2fs, origin %.1f MB (total %.1f), mirror %.1f MB, fallbacks %d, mirror layer GETs 200/206/other %d/%d/%d, origin layer GETs %d (%d whole)",
		head, s.Median, s.Max, float64(r.OriginBytes)/1e6, float64(r.OriginBytesTotal)/1e6, float64(r.MirrorBytes)/1e6,
		r.Fallbacks(), r.Stats.Full, r.Stats.Partial, r.Stats.Failed, r.Stats.OriginBlobGets, r.Stats.OriginFull)
	for _, n := range r.NodeResults {
		if n.Error != "" {
			line += fmt.Sprintf("\n  node %d FAILED: %s", n.Node, n.Error)
		}
	}
	return line
}

// sample is the link counters when a node got ready.
type sample struct {
	at             time.Time
	origin, mirror int64
	busy           float64  // readMachineBusy
	cpu            CPUSplit // the node's processes' CPU (nodeCPU)
	infra          float64  // the bench's and the registries' own CPU
}

// runCluster is one cold cluster run.
func runCluster(ctx context.Context, cfg ClusterConfig, t clusterTarget, n int, path string, s snapshotter, i int, dropped *bool) (r ClusterRun) {
	r = ClusterRun{Nodes: n, Path: path, Snapshotter: s.name, Iteration: i}
	dir := filepath.Join(cfg.WorkDir, "runs", fmt.Sprintf("n%d-%s-%s-%d", n, path, s.name, i))
	rctx, cancel := context.WithTimeout(ctx, cfg.RunTimeout)
	defer cancel()
	hostsDir := filepath.Join(dir, "hosts.d")
	if err := os.MkdirAll(hostsDir, 0o755); err != nil {
		r.Error = err.Error()
		return r
	}
	originLogStart := countRequests(t.origin.Log())
	var mirror *harness.Registry
	var mirrorLink *harness.ShapedLink
	if isMirror(path) {
		var err error
		mirror, err = harness.StartRegistryWith(rctx, filepath.Join(cfg.Tools.Bin, "registry"), filepath.Join(dir, "mirror"),
			harness.RegistryOptions{ProxyRemote: "http://" + t.link.Addr})
		if err != nil {
			r.Error = "start mirror: " + err.Error()
			return r
		}
		defer mirror.Stop()
		// An unshaped relay in front of the mirror counts the bytes it serves.
		if mirrorLink, err = harness.NewShapedLink(mirror.Host, harness.Shaping{Unshaped: true}); err != nil {
			r.Error = err.Error()
			return r
		}
		defer mirrorLink.Close()
		hdir := filepath.Join(hostsDir, t.link.Addr)
		if err = os.MkdirAll(hdir, 0o755); err == nil {
			err = os.WriteFile(filepath.Join(hdir, "hosts.toml"), []byte(MirrorHostsToml(t.link.Addr, mirrorLink.Addr)), 0o644)
		}
		if err != nil {
			r.Error = "write hosts.toml: " + err.Error()
			return r
		}
	}
	mirrorServed := func() int64 {
		if mirrorLink == nil {
			return 0
		}
		return mirrorLink.Served()
	}
	daemonCfg := DefaultDaemonConfig + fmt.Sprintf("\n[resolver]\n  config_path = %q\n", hostsDir)
	nodes := make([]*node, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for k := 0; k < n; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[k], errs[k] = startNode(rctx, Config{Tools: cfg.Tools}, filepath.Join(dir, fmt.Sprintf("node%d", k)), s, daemonCfg)
		}()
	}
	wg.Wait()
	defer func() {
		if err := stopNodes(nodes); err != nil && r.Error == "" {
			r.Error = "stop nodes: " + err.Error()
		}
		if r.OK() && !cfg.KeepRuns {
			_ = os.RemoveAll(dir)
		}
	}()
	if err := errors.Join(errs...); err != nil {
		r.Error = "start nodes: " + err.Error()
		return r
	}
	baseOrigin := t.link.Served()
	mirrorLogStart := 0
	if path == PathMirrorWarm {
		if err := warmMirror(rctx, mirrorLink.Addr, t.info); err != nil {
			r.Error = err.Error()
			return r
		}
		// The access log line of a GET is written after its body was sent:
		// wait for the warm-up's lines before counting the nodes' GETs.
		var err error
		if mirrorLogStart, err = waitLayerGets(rctx, mirror.Log(), t.info, len(t.info.LayerDigests)); err != nil {
			r.Error = err.Error()
			return r
		}
	}
	*dropped = dropCaches()
	baseMirror := mirrorServed()
	infraPids := []int{os.Getpid(), t.origin.Pid()}
	if mirror != nil {
		infraPids = append(infraPids, mirror.Pid())
	}
	// The nodes' CPU so far (starting up) is not the runs': take it off.
	procs := readProcs("/proc")
	baseInfra := ownCPU(procs, infraPids...)
	baseCPU := make([]CPUSplit, n)
	for k, nd := range nodes {
		baseCPU[k] = nodeCPU(procs, nd.env.Dir)
	}
	baseBusy, started := readMachineBusy(), time.Now()
	barrier := make(chan struct{})
	results := make([]ClusterNode, n)
	samples := make([]sample, n)
	for k := 0; k < n; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-barrier
			results[k], samples[k] = runNode(rctx, nodes[k], s.plugin, t.info.Ref, hostsDir, func() sample {
				sm := sample{at: time.Now(), origin: t.link.Served(), mirror: mirrorServed(), busy: readMachineBusy()}
				procs := readProcs("/proc")
				sm.cpu, sm.infra = nodeCPU(procs, nodes[k].env.Dir), ownCPU(procs, infraPids...)
				return sm
			})
			results[k].Node = k
			results[k].StartCPU = baseCPU[k]
			if !samples[k].at.IsZero() {
				results[k].CPU = results[k].CPU.Add(samples[k].cpu.Sub(baseCPU[k]))
			}
		}()
	}
	close(barrier)
	wg.Wait()
	r.NodeResults = results
	var last sample
	for _, sm := range samples {
		if sm.at.After(last.at) {
			last = sm
		}
	}
	if !last.at.IsZero() {
		r.OriginBytes, r.MirrorBytes = last.origin-baseOrigin, last.mirror-baseMirror
		r.WindowSeconds, r.InfraCPUSeconds = last.at.Sub(started).Seconds(), last.infra-baseInfra
		if busy := last.busy - baseBusy; !math.IsNaN(busy) { // NaN cannot be written as JSON
			r.MachineBusySeconds = busy
		}
	}
	if s.bin != "" {
		for k, nd := range nodes {
			countLazy(nd, &r.NodeResults[k])
		}
	}
	// Stop the nodes now so that the totals include what was in flight.
	err := stopNodes(nodes)
	nodes = nil
	r.OriginBytesTotal, r.MirrorBytesTotal = t.link.Served()-baseOrigin, mirrorServed()-baseMirror
	if err != nil {
		r.Error = "stop nodes: " + err.Error()
	}
	layers := map[string]bool{}
	for _, d := range t.info.LayerDigests {
		layers[d] = true
	}
	if reqs, err := harness.RegistryRequests(t.origin.Log()); err == nil && originLogStart <= len(reqs) {
		for _, q := range layerGets(reqs[originLogStart:], layers) {
			r.Stats.OriginBlobGets++
			if q.Status == 200 {
				r.Stats.OriginFull++
			}
		}
	}
	if mirror != nil {
		if reqs, err := harness.RegistryRequests(mirror.Log()); err == nil && mirrorLogStart <= len(reqs) {
			for _, q := range layerGets(reqs[mirrorLogStart:], layers) {
				switch q.Status {
				case 200:
					r.Stats.Full++
				case 206:
					r.Stats.Partial++
				default:
					r.Stats.Failed++
				}
			}
		}
	}
	return r
}

// warmMirror GETs every layer blob of the image whole through the mirror,
// which stores a blob once it has sent all of it.
func warmMirror(ctx context.Context, mirror string, info WorkloadInfo) error {
	repo, _, _ := strings.Cut(info.Repo, ":")
	for _, d := range info.LayerDigests {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+mirror+"/v2/"+repo+"/blobs/"+d, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("warm the mirror with %s: %w", d, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("warm the mirror with %s: %s, %v", d, resp.Status, err)
		}
	}
	return nil
}

// waitLayerGets waits until the registry's access log holds n GETs of the
// image's layers and returns the number of requests it then holds.
func waitLayerGets(ctx context.Context, log string, info WorkloadInfo, n int) (int, error) {
	layers := map[string]bool{}
	for _, d := range info.LayerDigests {
		layers[d] = true
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		reqs, err := harness.RegistryRequests(log)
		if err == nil && len(layerGets(reqs, layers)) >= n {
			return len(reqs), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the mirror's access log has not logged the %d warm-up GETs: %v", n, err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// layerGets are the GETs of the given layer blobs.
func layerGets(reqs []harness.Request, layers map[string]bool) []harness.Request {
	var out []harness.Request
	for _, q := range reqs {
		u, err := url.Parse(q.URI)
		if err != nil || q.Method != "GET" {
			continue
		}
		if i := strings.LastIndex(u.Path, "/blobs/"); i >= 0 && layers[u.Path[i+len("/blobs/"):]] {
			out = append(out, q)
		}
	}
	return out
}

func countRequests(log string) int {
	reqs, err := harness.RegistryRequests(log)
	if err != nil {
		return 0
	}
	return len(reqs)
}

// countLazy records how many layers the node's daemon mounted lazily and
// how many it failed to mount (the fallback), from its mounts and log.
func countLazy(nd *node, res *ClusterNode) {
	if nd == nil || nd.daemon == nil {
		return
	}
	if mounts, err := harness.Mounts(nd.daemon.Root); err == nil {
		for _, typ := range mounts {
			if typ == "fuse.rawBridge" {
				res.LazyLayers++
			}
		}
	}
	if data, err := os.ReadFile(nd.daemon.Log()); err == nil {
		res.Fallbacks = strings.Count(string(data), "failed to prepare remote snapshot")
	}
}

// stopNodes stops every node at once.
func stopNodes(nodes []*node) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for k, nd := range nodes {
		if nd == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := stopNode(nd); err != nil {
				errs[k] = fmt.Errorf("node %d: %w", k, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// runNode pulls ref on one node and runs it until "ready"; at ready it
// takes a sample of the links' counters.
func runNode(ctx context.Context, nd *node, plugin, ref, hostsDir string, now func() sample) (ClusterNode, sample) {
	var res ClusterNode
	start := time.Now()
	pull := nerdctlCmd(ctx, nd.env, "--hosts-dir", hostsDir, "--snapshotter", plugin, "pull", "--quiet", ref)
	if out, err := pull.CombinedOutput(); err != nil {
		res.Error = fmt.Sprintf("pull: %v: %s", err, strings.TrimSpace(string(out)))
		return res, sample{}
	}
	res.PullSeconds = time.Since(start).Seconds()
	// nerdctl pull has exited: its CPU (and its children's) is in its rusage.
	if ru, ok := pull.ProcessState.SysUsage().(*syscall.Rusage); ok {
		res.CPU.Nerdctl += time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	cmd := nerdctlCmd(ctx, nd.env, "--hosts-dir", hostsDir, "--snapshotter", plugin, "run", "--rm", "--net", "none", ref)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		res.Error = err.Error()
		return res, sample{}
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		res.Error = "start nerdctl run: " + err.Error()
		return res, sample{}
	}
	var sm sample
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if sm.at.IsZero() && strings.TrimSpace(sc.Text()) == "ready" {
			sm = now()
		}
	}
	if err := cmd.Wait(); err != nil {
		res.Error = fmt.Sprintf("nerdctl run: %v: %s", err, firstLine(stderr.String()))
		return res, sm
	}
	if sm.at.IsZero() {
		res.Error = "container exited without printing ready"
		return res, sm
	}
	res.TTRSeconds = sm.at.Sub(start).Seconds()
	return res, sm
}
