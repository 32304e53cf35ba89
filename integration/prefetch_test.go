package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
)

// prefetchDaemonConfig: v1 and v2 discovery, no background walk (it would
// fetch the rest of the layers and blur who fetched what), [prefetch]
// enable as given.
const prefetchDaemonConfig = `
[pull_modes.soci_v1]
  enable = true
[background_fetch]
  disable = true
[prefetch]
  enable = %t
  max_concurrency = 2
`

// layerRanges counts the range requests the registry served for blob
// layer, in any repository.
func layerRanges(t *testing.T, e *harness.Env, layer digest.Digest) int {
	t.Helper()
	reqs, err := harness.RegistryRequests(e.Registry.Log())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range reqs {
		if r.Method == "GET" && r.Status == 206 && strings.HasSuffix(r.URI, "/blobs/"+layer.String()) {
			n++
		}
	}
	return n
}

// TestPrefetchArtifacts: an image whose SOCI index has a prefetch artifact
// for /data/b.bin (made by our `soci create --prefetch-file`, v1, and by
// `soci convert --prefetch-file`, v2, as the reference writes them) gets
// that file's spans fetched right after its layers are mounted, before any
// container reads; reading the file then asks the registry for nothing.
// With [prefetch] enable = false nothing is prefetched and the read fetches.
func TestPrefetchArtifacts(t *testing.T) {
	cli := cliEnv(t)
	ctx := testContext(t, 15*time.Minute)
	img := newLayeredImage()
	layer := buildImage(t, img.spec).LayerDescs[1].Digest // holds /data/b.bin: 3 MiB and a bit, random
	src := pushImage(t, cli.Registry.Host, "prefetch/src:latest", img.spec)
	nerdctl(t, ctx, cli, "pull", "-q", src)
	spanFlags := []string{"--span-size", "1048576", "--min-layer-size", "0", "--prefetch-file", "/data/b.bin"}

	for _, tc := range []struct {
		name   string
		v1     bool
		enable bool
	}{
		{"create-v1", true, true},
		{"convert-v2", false, true},
		{"disabled", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			metricsCfg, url := metricsConfig(t)
			e := startEnv(t, metricsCfg+fmt.Sprintf(prefetchDaemonConfig, tc.enable))
			ref := e.Registry.Host + "/prefetch/" + tc.name + ":latest"
			if tc.v1 {
				nerdctl(t, ctx, cli, "tag", src, ref)
				nerdctl(t, ctx, cli, "push", ref)
				sociCLI(t, ctx, cli, append(append([]string{"create"}, spanFlags...), ref)...)
				sociCLI(t, ctx, cli, "push", ref)
			} else {
				sociCLI(t, ctx, cli, append(append([]string{"convert"}, spanFlags...), src, ref)...)
				nerdctl(t, ctx, cli, "push", ref)
			}
			if n := layerRanges(t, e, layer); n != 0 {
				t.Fatalf("%d range requests for layer %s before the pull", n, layer)
			}

			nerdctl(t, ctx, e, "--snapshotter", "soci", "pull", "-q", ref)
			if n := fuseLayers(t, e); n != 3 {
				t.Fatalf("%d layers mounted lazily after the pull, want 3", n)
			}
			var pulled int
			if tc.enable {
				s := waitMetric(t, url, "soci_prefetch_spans_total", 4, time.Minute)
				t.Logf("prefetched %v spans, %v compressed bytes", s["soci_prefetch_spans_total"], s["soci_prefetch_bytes_total"])
				if s["soci_prefetch_bytes_total"] < 3<<20 {
					t.Errorf("prefetched %v bytes, want the 3 MiB and more of /data/b.bin", s["soci_prefetch_bytes_total"])
				}
				if pulled = layerRanges(t, e, layer); pulled == 0 {
					t.Errorf("no range request for layer %s after the prefetch", layer)
				}
			} else if pulled = layerRanges(t, e, layer); pulled != 0 {
				t.Errorf("%d range requests for layer %s after the pull, with prefetch disabled", pulled, layer)
			}

			out, err := e.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", ref, "sha256", "/data/b.bin")
			if err != nil {
				t.Fatal(err)
			}
			if want := img.want["/data/b.bin"]; !strings.Contains(out, want) {
				t.Fatalf("sha256 /data/b.bin = %q, want %q", out, want)
			}
			read := layerRanges(t, e, layer) - pulled
			samples := scrape(t, url)
			switch {
			case tc.enable && read != 0:
				t.Errorf("reading the prefetched /data/b.bin made %d more range requests for its layer", read)
			case !tc.enable && read == 0:
				t.Errorf("reading /data/b.bin made no range request, prefetch disabled: the check is broken")
			case !tc.enable && samples["soci_prefetch_spans_total"] != 0:
				t.Errorf("soci_prefetch_spans_total = %v with prefetch disabled", samples["soci_prefetch_spans_total"])
			}
			if tc.v1 {
				checkRestoreSkipsPrefetch(t, ctx, e, ref)
			}
		})
	}
}

// checkRestoreSkipsPrefetch: the layers the FUSE host served before it
// died are mounted again from local state only when the daemon restarts,
// without reading their prefetch artifacts.
func checkRestoreSkipsPrefetch(t *testing.T, ctx context.Context, e *harness.Env, ref string) {
	t.Helper()
	before, err := os.ReadFile(e.Daemon.Log())
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(before), `msg="prefetch done"`); n != 1 {
		t.Fatalf("%d prefetch done log lines after the first pull, want 1 (the layer of /data/b.bin)", n)
	}
	if err := e.Daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := e.Daemon.Cleanup(); err != nil { // the FUSE host too: its mounts must be restored
		t.Fatal(err)
	}
	from := logSize(t, e)
	if err := e.Daemon.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// A prefetch, had the restore started one, logs by the time a
	// container has run.
	if n := fuseLayers(t, e); n != 3 {
		t.Fatalf("after restart: %d layers mounted lazily, want 3", n)
	}
	if out, err := e.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", ref, "sha256", "/data/b.bin"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	after, err := os.ReadFile(e.Daemon.Log())
	if err != nil {
		t.Fatal(err)
	}
	restarted := string(after[from:])
	if !strings.Contains(restarted, "restored remote snapshots") {
		t.Fatalf("no restore after the restart:\n%s", restarted)
	}
	if strings.Contains(restarted, "prefetch") {
		t.Errorf("the local-only restore read a prefetch artifact:\n%s", restarted)
	}
}
