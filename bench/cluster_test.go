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
