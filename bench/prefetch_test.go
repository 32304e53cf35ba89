package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fastsoci/soci-snapshotter/integration/image"
)

func TestProbeBytesRead(t *testing.T) {
	out := []string{"stat-all 50000", "read-fraction 2500 2800000", "chain 300 2400000", "/bin/ready-marker 1",
		"read-all 800 104857600", "ready", `"/a b" 7`, "chain x y"}
	if got, want := probeBytesRead(out), int64(2800000+2400000+1+104857600); got != want {
		t.Errorf("probeBytesRead = %d, want %d", got, want)
	}
}

func TestPrefetchedBytes(t *testing.T) {
	log := filepath.Join(t.TempDir(), "daemon.log")
	data := `time="x" level=info msg="prefetch done" bytes=989188 failed=0 fetched=1 joined=0 layer="sha256:a" requests=1
time="x" level=info msg="layer mounted lazily" bytes=5
time="x" level=warning msg="prefetch done; some spans failed to load and are left to reads" bytes=7
time="x" level=info msg="prefetch done" bytes=24616652 failed=0
`
	if err := os.WriteFile(log, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := prefetchedBytes(log); err != nil || got != 989188+24616652 {
		t.Errorf("prefetchedBytes = %d, %v; want %d", got, err, 989188+24616652)
	}
}

// TestPrefetchWorkloads: a Prefetch workload is its base workload with
// the ready marker in the base layer, read just before "ready".
func TestPrefetchWorkloads(t *testing.T) {
	ws := Workloads()
	for _, base := range []string{"import-chain", "many-files"} {
		i := slices.IndexFunc(ws, func(w Workload) bool { return w.Name == base+"+prefetch" })
		j := slices.IndexFunc(ws, func(w Workload) bool { return w.Name == base })
		if i < 0 || j < 0 || !ws[i].Prefetch || ws[j].Prefetch {
			t.Fatalf("%s: want a Prefetch workload %s+prefetch", base, base)
		}
		got, plain := ws[i].Spec([]byte("probe")), ws[j].Spec([]byte("probe"))
		wantCmd := append(slices.Clone(plain.Cmd[:len(plain.Cmd)-1]), "read-bytes", ReadyMarker, "1", "--", "ready")
		if !slices.Equal(got.Cmd, wantCmd) {
			t.Errorf("%s+prefetch: cmd %q, want %q", base, got.Cmd, wantCmd)
		}
		if !slices.ContainsFunc(got.Layers[0].Entries, func(e image.Entry) bool { return "/"+e.Name == ReadyMarker }) {
			t.Errorf("%s+prefetch: no %s in the base layer", base, ReadyMarker)
		}
		if len(got.Layers) != len(plain.Layers) {
			t.Errorf("%s+prefetch: %d layers, want %d", base, len(got.Layers), len(plain.Layers))
		}
	}
}

func TestColumns(t *testing.T) {
	snaps := []snapshotter{{Overlayfs, "overlayfs", ""}, {Ours, "soci", "/ours"}, {"base", "soci", "/base"}}
	plain := columns(WorkloadInfo{Ref: "r"}, snaps)
	if len(plain) != 3 || plain[1].ref != "r" || plain[1].prefetch {
		t.Errorf("columns of a workload = %+v", plain)
	}
	got := columns(WorkloadInfo{Ref: "r", PrefetchRef: "p"}, snaps)
	want := []column{{snapshotter{Ours, "soci", "/ours"}, "r", true}, {snapshotter{OursPrefetch, "soci", "/ours"}, "p", true},
		{snapshotter{"base+prefetch", "soci", "/base"}, "p", true}}
	if !slices.Equal(got, want) {
		t.Errorf("columns of a Prefetch workload = %+v, want %+v", got, want)
	}
	if c := got[0].daemonConfig(Config{DaemonConfig: "x"}); !strings.HasPrefix(c, "x") || !strings.Contains(c, "enable = true") {
		t.Errorf("daemon config %q: want [prefetch] enable added", c)
	}
}

// TestPrefetchTable: ours with the artifact is compared with ours without;
// rows of snapshotters that did not run a workload are left out.
func TestPrefetchTable(t *testing.T) {
	r := &Report{Link: "l", Runs: 2, Snapshotters: []string{Overlayfs, Ours, OursPrefetch}}
	r.Workloads = []WorkloadInfo{{Name: "w+prefetch"}}
	for i := range 2 {
		r.Results = append(r.Results,
			Run{Workload: "w+prefetch", Snapshotter: Ours, Iteration: i, TTRSeconds: 4, BytesBeforeReady: 30e6, BytesRead: 3e6},
			Run{Workload: "w+prefetch", Snapshotter: OursPrefetch, Iteration: i, TTRSeconds: 1, BytesBeforeReady: 27e6, BytesRead: 3e6})
	}
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"soci+prefetch/soci  0.250 (0.250-0.250)  0.900 (0.900-0.900)", "3.0 (3.0-3.0)  9.00 (9.00-9.00)"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, Overlayfs) {
		t.Errorf("table has a row for overlayfs, which did not run:\n%s", out)
	}
}

func TestWaitsFullyLocal(t *testing.T) {
	for name, want := range map[string]bool{
		Ours: true, OursPrefetch: true, Overlayfs: false,
		"reference": false, "reference+prefetch": false, // a --compare build in a Prefetch workload
	} {
		if got := waitsFullyLocal(name); got != want {
			t.Errorf("waitsFullyLocal(%q) = %v, want %v", name, got, want)
		}
	}
}
