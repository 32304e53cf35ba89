package bench

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
)

func clusterRun(n int, path, sn string, i int, origin, mirror int64, ttrs ...float64) ClusterRun {
	r := ClusterRun{Nodes: n, Path: path, Snapshotter: sn, Iteration: i, OriginBytes: origin, OriginBytesTotal: origin + 1, MirrorBytes: mirror}
	for k, t := range ttrs {
		r.NodeResults = append(r.NodeResults, ClusterNode{Node: k, TTRSeconds: t})
	}
	return r
}

func TestClusterRows(t *testing.T) {
	failed := clusterRun(2, PathMirror, Ours, 1, 999, 999, 1, 1)
	failed.NodeResults[1].Error = "pull failed"
	failed.NodeResults[0].Fallbacks = 2
	failed.Stats = MirrorStats{Full: 1, Failed: 3}
	rep := &ClusterReport{Results: []ClusterRun{
		clusterRun(1, PathMirror, Ours, 0, 100, 100, 2),
		clusterRun(2, PathMirror, Ours, 0, 300, 200, 2, 4),
		failed,
		clusterRun(2, PathMirror, Ours, 2, 500, 200, 3, 6),
		clusterRun(1, PathMirror, Ours, 1, 200, 100, 4),
	}}
	rows := rep.Rows()
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2: %+v", len(rows), rows)
	}
	one, two := rows[0], rows[1]
	if one.Nodes != 1 || one.OK != 2 || one.Runs != 2 || one.TTRMedian != 3 || one.TTRMax != 3 || one.OriginBytes != 150 {
		t.Errorf("N=1 row %+v", one)
	}
	// The failed run counts in Runs, fallbacks and answers, not in times or bytes.
	if two.Nodes != 2 || two.OK != 2 || two.Runs != 3 || two.Fallbacks != 2 || two.Stats.Full != 1 || two.Stats.Failed != 3 {
		t.Errorf("N=2 row %+v", two)
	}
	// TTRs 2,4,3,6: median 3.5; maxima 4 and 6: median 5.
	if two.TTRMedian != 3.5 || two.TTRMax != 5 || two.OriginBytes != 400 || two.OriginBytesTotal != 401 || two.MirrorBytes != 200 {
		t.Errorf("N=2 row %+v", two)
	}
}

func TestClusterRunOK(t *testing.T) {
	r := clusterRun(3, PathDirect, Overlayfs, 0, 1, 0, 1, 2)
	if r.OK() {
		t.Error("a run with fewer node results than nodes is OK")
	}
	r = clusterRun(2, PathDirect, Overlayfs, 0, 1, 0, 1, 2)
	if !r.OK() {
		t.Error("a complete run is not OK")
	}
	r.Error = "stop nodes: boom"
	if r.OK() {
		t.Error("a run with an error is OK")
	}
	if got := clusterRun(2, PathDirect, Ours, 0, 0, 0, 1, 2); !math.IsNaN(func() float64 {
		got.NodeResults[0].Error = "x"
		return got.TTRs()[0]
	}()) {
		t.Error("a failed node's TTR is not NaN")
	}
}

func TestGoals(t *testing.T) {
	rows := []ClusterRow{
		{Nodes: 1, Path: PathMirror, Snapshotter: Ours, TTRMedian: 2, TTRMax: 2, OriginBytes: 100},
		{Nodes: 8, Path: PathMirror, Snapshotter: Ours, TTRMedian: 2.5, TTRMax: 3, OriginBytes: 110},
		{Nodes: 1, Path: PathMirror, Snapshotter: Overlayfs, TTRMedian: 4, TTRMax: 4, OriginBytes: 100},
		{Nodes: 8, Path: PathMirror, Snapshotter: Overlayfs, TTRMedian: 9, TTRMax: 10, OriginBytes: 800},
		{Nodes: 8, Path: PathDirect, Snapshotter: Ours, TTRMax: 100, OriginBytes: 1},
		{Nodes: 4, Path: PathMirror, Snapshotter: Ours, TTRMax: 100, OriginBytes: 1e9},
	}
	goals := Goals(rows)
	if len(goals) != 4 {
		t.Fatalf("%d goals: %+v", len(goals), goals)
	}
	want := []struct {
		sn    string
		value float64
		met   bool
	}{{"mirror " + Ours, 1.1, true}, {"mirror " + Ours, 1.5, true}, {"mirror " + Overlayfs, 8, false}, {"mirror " + Overlayfs, 2.5, false}}
	for i, w := range want {
		g := goals[i]
		if g.Snapshotter != w.sn || math.Abs(g.Value-w.value) > 1e-9 || g.Met() != w.met {
			t.Errorf("goal %d = %+v (met %v), want %s %v met %v", i, g, g.Met(), w.sn, w.value, w.met)
		}
	}
	if !strings.Contains(goals[0].Name, "N=8") {
		t.Errorf("goal name %q does not name the largest count", goals[0].Name)
	}
	// Without a single-node row there is nothing to compare.
	for _, g := range Goals(rows[1:2]) {
		if !math.IsNaN(g.Value) || g.Met() {
			t.Errorf("goal without N=1: %+v", g)
		}
	}
}

// TestMirrorHostsToml: containerd's own hosts.toml loader (which our
// daemon's resolver uses too) reads the file as the mirror first, for pull
// and resolve over plain HTTP, then the origin.
func TestMirrorHostsToml(t *testing.T) {
	const origin, mirror = "127.0.0.1:5000", "127.0.0.1:6000"
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, origin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, origin, "hosts.toml"), []byte(MirrorHostsToml(origin, mirror)), 0o644); err != nil {
		t.Fatal(err)
	}
	hosts, err := config.ConfigureHosts(context.Background(), config.HostOptions{HostDir: config.HostDirFromRoot(root)})(origin)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 2 {
		t.Fatalf("%d hosts, want 2: %+v", len(hosts), hosts)
	}
	m, o := hosts[0], hosts[1]
	if m.Host != mirror || m.Scheme != "http" || m.Capabilities != docker.HostCapabilityPull|docker.HostCapabilityResolve {
		t.Errorf("first host %s://%s caps %v, want the mirror over http for pull and resolve", m.Scheme, m.Host, m.Capabilities)
	}
	if o.Host != origin || o.Scheme != "http" {
		t.Errorf("second host %s://%s, want the origin over http", o.Scheme, o.Host)
	}
}

func TestClusterRowsCPU(t *testing.T) {
	withCPU := func(r ClusterRun, busy, window, infra float64, cpu ...CPUSplit) ClusterRun {
		for k := range r.NodeResults {
			r.NodeResults[k].CPU = cpu[k]
			r.NodeResults[k].StartCPU = CPUSplit{Daemon: 0.5}
		}
		r.MachineBusySeconds, r.WindowSeconds, r.InfraCPUSeconds = busy, window, infra
		return r
	}
	failed := withCPU(clusterRun(2, PathMirror, Ours, 2, 0, 0, 1, 1), 99, 99, 99, CPUSplit{Host: 99}, CPUSplit{Host: 99})
	failed.Error = "boom"
	rep := &ClusterReport{Cores: 2, Results: []ClusterRun{
		withCPU(clusterRun(2, PathMirror, Ours, 0, 0, 0, 1, 2), 6, 2, 1, CPUSplit{Daemon: 1, Containerd: 1}, CPUSplit{Host: 1, Nerdctl: 1}),
		withCPU(clusterRun(2, PathMirror, Ours, 1, 0, 0, 1, 4), 2, 4, 3, CPUSplit{Daemon: 1, Containerd: 3}, CPUSplit{Host: 1, Shim: 1}),
		failed,
		withCPU(clusterRun(1, PathMirror, Ours, 0, 0, 0, 1), 1, 1, 1, CPUSplit{Daemon: 1}),
	}}
	rows := rep.Rows()
	two := rows[0]
	// Means over the two complete runs: run totals 4 and 6, the failed one left out.
	if two.CPU.Total() != 5 || two.CPU.Containerd != 2 || two.CPU.Ours() != 2 || two.StartCPU.Total() != 1 {
		t.Errorf("CPU %+v start %+v", two.CPU, two.StartCPU)
	}
	if two.MachineBusy != 4 || two.Window != 3 || two.Infra != 2 || two.Floor != 2.5 || two.FloorNotOurs != 1.5 {
		t.Errorf("busy %v window %v infra %v floor %v / %v", two.MachineBusy, two.Window, two.Infra, two.Floor, two.FloorNotOurs)
	}
	none := (&ClusterReport{Cores: 2, Results: []ClusterRun{failed}}).Rows()[0]
	if !math.IsNaN(none.Floor) || !math.IsNaN(none.MachineBusy) {
		t.Errorf("a cell without a complete run has floor %v, machine busy %v", none.Floor, none.MachineBusy)
	}
}

func TestCPUFloors(t *testing.T) {
	rows := []ClusterRow{
		{Nodes: 1, Path: PathMirror, Snapshotter: Ours, TTRMedian: 2},
		{Nodes: 8, Path: PathMirror, Snapshotter: Ours, TTRMax: 5, Floor: 3.5, FloorNotOurs: 2, Infra: 1},
		{Nodes: 1, Path: PathDirect, Snapshotter: Overlayfs, TTRMedian: 2},
		{Nodes: 8, Path: PathDirect, Snapshotter: Overlayfs, TTRMax: 9, Floor: 4, FloorNotOurs: 4},
		{Nodes: 8, Path: PathDirect, Snapshotter: Ours, TTRMax: 4, Floor: 2, FloorNotOurs: 1}, // no N=1: no floor
		{Nodes: 1, Path: PathMirrorWarm, Snapshotter: Ours, TTRMedian: 2},
		{Nodes: 8, Path: PathMirrorWarm, Snapshotter: Ours, TTRMax: 3, Floor: 2, FloorNotOurs: 1},
	}
	floors := CPUFloors(rows, 2)
	if len(floors) != 3 {
		t.Fatalf("%d floors: %+v", len(floors), floors)
	}
	want := []struct {
		cell              string
		unreach, notOurs  bool
		limit, floor, ttr float64
	}{
		{"mirror " + Ours, true, false, 3, 3.5, 5},
		{"direct " + Overlayfs, true, true, 3, 4, 9},
		{"mirror-warm " + Ours, false, false, 3, 2, 3},
	}
	for i, w := range want {
		f := floors[i]
		if f.Cell != w.cell || f.Nodes != 8 || f.Unreachable() != w.unreach || f.UnreachableNotOurs() != w.notOurs ||
			f.Limit != w.limit || f.Floor != w.floor || f.TTRMax != w.ttr {
			t.Errorf("floor %d = %+v (unreachable %v, w/o ours %v), want %+v", i, f, f.Unreachable(), f.UnreachableNotOurs(), w)
		}
	}
	if floors[0].FloorWithInfra != 4 {
		t.Errorf("floor with infra %v, want 3.5 + 1/2", floors[0].FloorWithInfra)
	}
	if CPUFloors(rows[:1], 2) != nil {
		t.Error("floors without a count above 1")
	}
}

func TestClusterTableCPU(t *testing.T) {
	one := clusterRun(1, PathMirror, Ours, 0, 100, 100, 2)
	one.NodeResults[0].CPU = CPUSplit{Daemon: 0.5, Containerd: 0.5}
	big := clusterRun(2, PathMirror, Ours, 0, 100, 100, 3, 4)
	big.NodeResults[0].CPU = CPUSplit{Containerd: 4}
	big.NodeResults[1].CPU = CPUSplit{Containerd: 3, Host: 1}
	rep := &ClusterReport{Cores: 2, Runs: 1, Results: []ClusterRun{one, big}}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	// Floor 8 CPU s / 2 cores = 4 s, 3.5 s without ours, both above 1.5 x 2 s.
	if !strings.Contains(out, "N=2 floor 4.00 s (w/o ours 3.50 s, with infra 4.00 s) vs 1.5 x TTR N=1 = 3.00 s (TTR max 4.00 s): unreachable on these cores, whatever our daemon and host do") {
		t.Errorf("no floor verdict in\n%s", out)
	}
}
