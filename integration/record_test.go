package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/trace"
	"github.com/fastsoci/soci-snapshotter/integration/harness"
)

// recordDaemonConfig: node A records each image until /data/c.txt is
// opened (the window is long enough never to end first); no background
// walk, which would fetch whole layers.
const recordDaemonConfig = `
[pull_modes.soci_v1]
  enable = true
[background_fetch]
  disable = true
[prefetch]
  record = true
  record_seconds = 600
  record_until_file = "/data/c.txt"
`

// rangesOf counts the range requests the registry of e served for each of
// layers.
func rangesOf(t *testing.T, e *harness.Env, layers []digest.Digest) map[digest.Digest]int {
	t.Helper()
	out := map[digest.Digest]int{}
	for _, l := range layers {
		out[l] = layerRanges(t, e, l)
	}
	return out
}

// TestRecordedPrefetch, for a SOCI v1 (soci create) and a v2 (soci
// convert) image: node A (record on) pulls the image and runs a container
// that reads /bin/probe and /data/b.bin, then opens /data/c.txt, which
// ends the recording; the trace lists the spans of the first two layers
// and not the third. `soci prefetch from-trace` then `soci push` (v1) or
// the image's push (v2) attach it to the image's index; node B (fresh
// daemon root, containerd and content store, [prefetch] enable) pulls the
// image and fetches the traced spans before any container runs, and the
// same container then makes no range request for the traced layers.
func TestRecordedPrefetch(t *testing.T) {
	cli := cliEnv(t)
	ctx := testContext(t, 15*time.Minute)
	img := newLayeredImage()
	built := buildImage(t, img.spec)
	layers := []digest.Digest{built.LayerDescs[0].Digest, built.LayerDescs[1].Digest, built.LayerDescs[2].Digest}

	spanFlags := []string{"--span-size", "1048576", "--min-layer-size", "0"}
	for _, v1 := range []bool{true, false} {
		name := map[bool]string{true: "create-v1", false: "convert-v2"}[v1]
		t.Run(name, func(t *testing.T) {
			a := startEnv(t, recordDaemonConfig) // node A; its registry serves both nodes
			src := pushImage(t, a.Registry.Host, "record/src:latest", img.spec)
			ref := a.Registry.Host + "/record/" + name + ":latest"
			nerdctl(t, ctx, cli, "pull", "-q", src)
			if v1 {
				nerdctl(t, ctx, cli, "tag", src, ref)
				nerdctl(t, ctx, cli, "push", ref)
				sociCLI(t, ctx, cli, append(append([]string{"create"}, spanFlags...), ref)...)
				sociCLI(t, ctx, cli, "push", ref)
			} else {
				sociCLI(t, ctx, cli, append(append([]string{"convert"}, spanFlags...), src, ref)...)
				nerdctl(t, ctx, cli, "push", ref)
			}
			recordAndReplay(t, ctx, cli, a, ref, img, layers, v1)
		})
	}
}

// recordAndReplay runs the image ref once on node A (record on), attaches
// the trace with soci on cli and publishes it (soci push for v1, the
// image's push for v2), and checks a fresh node B.
func recordAndReplay(t *testing.T, ctx context.Context, cli, a *harness.Env, ref string, img layeredImage, layers []digest.Digest, v1 bool) {

	// Node A: run once, record.
	nerdctl(t, ctx, a, "--snapshotter", "soci", "pull", "-q", ref)
	if n := fuseLayers(t, a); n != 3 {
		t.Fatalf("node A: %d layers mounted lazily, want 3", n)
	}
	run := []string{"--snapshotter", "soci", "run", "--rm", "--net", "none", ref, "sha256", "/data/b.bin", "/data/c.txt"}
	out := nerdctl(t, ctx, a, run...)
	if want := img.want["/data/b.bin"]; !strings.Contains(out, want) {
		t.Fatalf("node A: sha256 /data/b.bin = %q, want %q", out, want)
	}
	tr := waitTrace(t, a.Daemon.Root, time.Minute)
	t.Logf("trace of %s: %+v", tr.Manifest, tr.Layers)
	for i, l := range layers[:2] {
		if len(tr.Layers[l].Spans) == 0 {
			t.Errorf("the trace lists no span of layer %d (%s)", i+1, l)
		}
	}
	if _, ok := tr.Layers[layers[2]]; ok {
		t.Errorf("the trace lists layer 3, read only after /data/c.txt was opened")
	}
	want := 0
	for _, l := range tr.Layers {
		for _, r := range l.Spans {
			want += int(r.End-r.Start) + 1
		}
	}
	path, err := trace.Path(filepath.Join(a.Daemon.Root, "fs", "traces"), tr.Manifest)
	if err != nil {
		t.Fatal(err)
	}

	if v1 {
		checkHostileTraces(t, ctx, cli, ref, path)
	}
	// Attach and push from the machine that built the index.
	sociCLI(t, ctx, cli, "prefetch", "from-trace", "--trace", path, ref)
	if ls := sociCLI(t, ctx, cli, "prefetch", "ls"); strings.Count(ls, "sha256:") < 2*len(tr.Layers) {
		t.Fatalf("soci prefetch ls lists no artifact for the traced layers:\n%s", ls)
	}
	if v1 {
		sociCLI(t, ctx, cli, "push", ref)
	} else {
		nerdctl(t, ctx, cli, "push", ref)
	}

	// Node B: a fresh node pulls; the traced spans come before any read.
	metricsCfg, url := metricsConfig(t)
	b := startEnv(t, metricsCfg+fmt.Sprintf(prefetchDaemonConfig, true))
	before := rangesOf(t, a, layers)
	nerdctl(t, ctx, b, "--snapshotter", "soci", "pull", "-q", ref)
	if n := fuseLayers(t, b); n != 3 {
		t.Fatalf("node B: %d layers mounted lazily, want 3", n)
	}
	s := waitMetric(t, url, "soci_prefetch_spans_total", float64(want), time.Minute)
	t.Logf("node B prefetched %v spans (trace: %d), %v compressed bytes", s["soci_prefetch_spans_total"], want, s["soci_prefetch_bytes_total"])
	pulled := rangesOf(t, a, layers)
	for l := range tr.Layers {
		if pulled[l] == before[l] {
			t.Errorf("node B: no range request for traced layer %s after the pull", l)
		}
	}
	out = nerdctl(t, ctx, b, run...)
	if want := img.want["/data/b.bin"]; !strings.Contains(out, want) {
		t.Fatalf("node B: sha256 /data/b.bin = %q, want %q", out, want)
	}
	after := rangesOf(t, a, layers)
	for l := range tr.Layers {
		if n := after[l] - pulled[l]; n != 0 {
			t.Errorf("node B: the container made %d range requests for traced layer %s", n, l)
		}
	}
	if after[layers[2]] == pulled[layers[2]] {
		t.Errorf("node B: reading /data/c.txt (untraced) made no range request: the check is broken")
	}
}

// waitTrace polls root's trace directory until one trace is there, and
// returns it parsed.
func waitTrace(t *testing.T, root string, timeout time.Duration) *trace.Trace {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		files, _ := filepath.Glob(filepath.Join(root, "fs", "traces", "sha256", "*.json"))
		if len(files) == 1 {
			data, err := os.ReadFile(files[0])
			if err != nil {
				t.Fatal(err)
			}
			tr, err := trace.Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			return tr
		}
		if len(files) > 1 || time.Now().After(deadline) {
			t.Fatalf("traces under %s: %v", root, files)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkHostileTraces: from-trace refuses a trace whose spans lie outside
// its span count, and one whose span count is not the zTOC's.
func checkHostileTraces(t *testing.T, ctx context.Context, cli *harness.Env, ref, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	layers := doc["layers"].(map[string]any)
	for _, tc := range []struct {
		name, want string
		edit       func(l map[string]any)
	}{
		{"span beyond the count", "within spans", func(l map[string]any) {
			l["prefetch_spans"] = []map[string]int{{"start_span": 0, "end_span": int(l["span_count"].(float64))}}
		}},
		{"span count not the zTOC's", "the trace says 1000 spans", func(l map[string]any) {
			l["span_count"] = 1000
			l["prefetch_spans"] = []map[string]int{{"start_span": 990, "end_span": 999}}
		}},
	} {
		for _, l := range layers {
			orig := maps.Clone(l.(map[string]any))
			tc.edit(l.(map[string]any))
			bad, err := json.Marshal(doc)
			if err != nil {
				t.Fatal(err)
			}
			maps.Copy(l.(map[string]any), orig)
			p := filepath.Join(t.TempDir(), "bad.json")
			if err := os.WriteFile(p, bad, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := cli.Soci(ctx, "prefetch", "from-trace", "--trace", p, ref)
			if err == nil || !strings.Contains(out+err.Error(), tc.want) {
				t.Errorf("%s: from-trace: %v, want an error saying %q:\n%s", tc.name, err, tc.want, out)
			}
			break
		}
	}
}
