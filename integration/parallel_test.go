package integration

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
	"github.com/fastsoci/soci-snapshotter/snapshot"
)

// parallelConfig turns parallel pull and unpack on as the primary mode,
// with small chunks so that every layer is fetched in several concurrent
// range requests.
const parallelConfig = defaultDaemonConfig + `
[pull_modes.parallel_pull_unpack]
  enable = true
  concurrent_download_chunk_size = "256kb"
  max_concurrent_downloads_per_image = 4
  max_concurrent_unpacks_per_image = 2
  discard_unpacked_layers = true
`

// pushPlain pushes img with no SOCI index.
func pushPlain(t *testing.T, e *harness.Env, name string, img *image.Image) string {
	t.Helper()
	ref := e.Registry.Host + "/" + name
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := image.Push(ctx, ref, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// pulledLayers lists the daemon's snapshots: committed ones by whether they
// are lazily served (remote), and the others.
func pulledLayers(t *testing.T, ctx context.Context, e *harness.Env) (local, remote, active int) {
	t.Helper()
	err := daemonSnapshots(t, e).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		switch {
		case info.Kind != snapshots.KindCommitted:
			active++
		case info.Labels[snapshot.RemoteLabel] != "":
			remote++
		default:
			local++
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list the daemon's snapshots: %v", err)
	}
	return local, remote, active
}

// pullStaging lists what parallel pull's staging directories hold.
func pullStaging(e *harness.Env) []string {
	entries, _ := filepath.Glob(filepath.Join(e.Daemon.Root, "snapshotter", "pull", "*", "*"))
	return entries
}

// waitNoPullStaging waits until parallel pull's staging is empty.
func waitNoPullStaging(t *testing.T, e *harness.Env) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(pullStaging(e)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("parallel pull staging still holds %v", pullStaging(e))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestParallelPullContent: an image without SOCI index (a tree of every
// kind of tar entry, whiteouts and an opaque directory across its layers)
// pulled with parallel pull and unpack runs with the same tree as under
// overlayfs; every layer is a local snapshot the daemon unpacked (none
// lazily served, none unpacked by containerd: the metric counts them all).
func TestParallelPullContent(t *testing.T) {
	mcfg, url := metricsConfig(t)
	e := startEnv(t, mcfg+parallelConfig)
	ctx := testContext(t, 10*time.Minute)
	spec := treeSpec()
	ref := pushPlain(t, e, "parallel/tree:latest", buildImage(t, spec))
	walk := func(snapshotter string) string { return walkTree(t, ctx, e, ref, snapshotter) }
	pulled := walk("soci")
	if n := fuseLayers(t, e); n != 0 {
		t.Errorf("%d layers lazily loaded with parallel pull primary, want none", n)
	}
	local, remote, _ := pulledLayers(t, ctx, e)
	if local != len(spec.Layers) || remote != 0 {
		t.Errorf("%d local and %d remote committed snapshots, want %d local", local, remote, len(spec.Layers))
	}
	samples := scrape(t, url)
	if v := samples[`soci_parallel_pull_layers_total{result="ok"}`]; v != float64(len(spec.Layers)) {
		t.Errorf(`soci_parallel_pull_layers_total{result="ok"} = %v, want %d (every layer unpacked by the daemon)`, v, len(spec.Layers))
	}
	if v := samples[`soci_parallel_pull_layers_total{result="failed"}`]; v != 0 {
		t.Errorf("%v layers failed", v)
	}
	waitNoPullStaging(t, e)

	full := walk("overlayfs")
	if !strings.Contains(full, "walk-done") {
		t.Fatalf("overlayfs walk did not finish:\n%s", tail(full, 20))
	}
	for _, gone := range []string{"/tree/d00/f005 ", "/tree/d01/", "/tree/opaque/old "} {
		if strings.Contains(pulled, gone) {
			t.Errorf("%q was deleted by an upper layer but is listed", gone)
		}
	}
	if pulled != full {
		t.Errorf("parallel-pulled walk differs from overlayfs walk:\n%s", diffLines(pulled, full, 20))
	}
}

// TestParallelPullMultiCore: with parallel pull primary, the layers of an
// image with a SOCI index are inflated on several cores from their zTOCs'
// checkpoints, and the image runs with the same tree as under overlayfs.
func TestParallelPullMultiCore(t *testing.T) {
	mcfg, url := metricsConfig(t)
	e := startEnv(t, mcfg+parallelConfig)
	ctx := testContext(t, 10*time.Minute)
	spec := treeSpec()
	ref := pushV2(t, e, "parallel/indexed:latest", buildImage(t, spec), sociimage.Options{SpanSize: 64 << 10})
	walk := func(snapshotter string) string { return walkTree(t, ctx, e, ref, snapshotter) }
	pulled := walk("soci")
	if n := fuseLayers(t, e); n != 0 {
		t.Errorf("%d layers lazily loaded with parallel pull primary, want none", n)
	}
	samples := scrape(t, url)
	if v := samples[`soci_parallel_pull_layers_total{result="ok"}`]; v != float64(len(spec.Layers)) {
		t.Errorf(`soci_parallel_pull_layers_total{result="ok"} = %v, want %d`, v, len(spec.Layers))
	}
	// Layers of one span have nothing to inflate in parallel.
	if v := samples[`soci_parallel_pull_multicore_inflate_total{result="ok"}`]; v < 1 {
		t.Errorf(`soci_parallel_pull_multicore_inflate_total{result="ok"} = %v, want at least 1`, v)
	}
	if v := samples[`soci_parallel_pull_multicore_inflate_total{result="redone"}`]; v != 0 {
		t.Errorf("%v layers inflated again in one stream", v)
	}
	waitNoPullStaging(t, e)
	full := walk("overlayfs")
	if pulled != full {
		t.Errorf("walk of the image inflated on several cores differs from overlayfs's:\n%s", diffLines(pulled, full, 20))
	}
}

// TestParallelPullCorruptLayer: a layer whose blob the registry serves
// altered fails the pull with an error naming it, and leaves no snapshot
// of it (nor of the layers after it) and nothing in staging.
func TestParallelPullCorruptLayer(t *testing.T) {
	mcfg, url := metricsConfig(t)
	e := startEnv(t, mcfg+parallelConfig)
	ctx := testContext(t, 5*time.Minute)
	img := buildImage(t, newLayeredImage().spec)
	ref := pushPlain(t, e, "parallel/corrupt:latest", img)
	victim := img.LayerDescs[1]
	path := registryBlobPath(e, victim.Digest.Encoded())
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x20
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := e.Nerdctl(ctx, "--snapshotter", "soci", "pull", "--quiet", ref)
	if err == nil {
		t.Fatalf("pull of an image with a corrupt layer succeeded:\n%s", out)
	}
	t.Logf("pull failed as it should: %v", err)
	if !strings.Contains(out+err.Error(), victim.Digest.Encoded()) {
		t.Errorf("pull error does not name the corrupt layer %s:\n%v\n%s", victim.Digest, err, out)
	}
	local, remote, active := pulledLayers(t, ctx, e)
	if local > 1 || remote != 0 || active != 0 {
		t.Errorf("after the failed pull: %d local, %d remote, %d active snapshots; want at most the first layer, committed", local, remote, active)
	}
	dirs, err := os.ReadDir(filepath.Join(e.Daemon.Root, "snapshotter", "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) != local {
		t.Errorf("%d snapshot directories for %d snapshots", len(dirs), local)
	}
	if v := scrape(t, url)[`soci_parallel_pull_layers_total{result="failed"}`]; v < 1 {
		t.Errorf(`soci_parallel_pull_layers_total{result="failed"} = %v, want the corrupt layer counted`, v)
	}
	waitNoPullStaging(t, e)
	if n := fuseLayers(t, e); n != 0 {
		t.Errorf("%d FUSE mounts", n)
	}
}

// TestParallelPullFallbackKeepsBlobs: with parallel pull as the fallback of
// lazy loading, an image with a SOCI index is lazily loaded and one
// without is pulled in parallel; discard_unpacked_layers = false keeps the
// latter's layer blobs in containerd's content store.
func TestParallelPullFallbackKeepsBlobs(t *testing.T) {
	dir := t.TempDir()
	mcfg, url := metricsConfig(t)
	cfg := mcfg + defaultDaemonConfig + fmt.Sprintf(`
[content_store]
  containerd_address = %q
[pull_modes.parallel_pull_unpack]
  experimental_parallel_pull_as_fallback = true
  concurrent_download_chunk_size = "1mb"
  discard_unpacked_layers = false
`, "unix://"+filepath.Join(dir, "containerd", "containerd.sock"))
	e := startEnvIn(t, dir, cfg, harness.StartDaemon)
	ctx := testContext(t, 6*time.Minute)
	img := newLayeredImage()
	built := buildImage(t, img.spec)

	lazyRef := pushV2(t, e, "parallel/indexed:latest", built, sociimage.Options{SpanSize: 1 << 20})
	checkLazyRun(t, ctx, e, lazyRef, img, 3)
	if v := scrape(t, url)[`soci_parallel_pull_layers_total{result="ok"}`]; v != 0 {
		t.Fatalf("%v layers of an indexed image went to parallel pull", v)
	}

	// Other layers: those of the indexed image are snapshots already.
	plain := crashImage(77)
	built = buildImage(t, plain.spec)
	plainRef := pushPlain(t, e, "parallel/plain:latest", built)
	checkSums(t, runSums(t, ctx, e, plainRef, plain.paths), plain.want)
	if v := scrape(t, url)[`soci_parallel_pull_layers_total{result="ok"}`]; v != float64(len(built.LayerDescs)) {
		t.Errorf(`soci_parallel_pull_layers_total{result="ok"} = %v, want %d`, v, len(built.LayerDescs))
	}
	out, err := e.Ctr(ctx, "content", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range built.LayerDescs {
		if !strings.Contains(out, l.Digest.String()) {
			t.Errorf("layer %s not in containerd's content store (discard_unpacked_layers = false)", l.Digest)
		}
	}
	// Each blob was written under a lease of ours that expires, so that
	// containerd's garbage collector keeps it until the image is recorded:
	// a collection with no image referring to the blobs keeps them.
	out, err = e.Ctr(ctx, "leases", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range built.LayerDescs {
		if !strings.Contains(out, "soci.parallel-pull.layer="+l.Digest.String()) {
			t.Errorf("no lease of ours for layer %s:\n%s", l.Digest, out)
		}
	}
	waitNoPullStaging(t, e)
	if _, err := e.Ctr(ctx, "images", "rm", "--sync", plainRef); err != nil {
		t.Fatal(err)
	}
	if out, err = e.Ctr(ctx, "content", "ls", "-q"); err != nil {
		t.Fatal(err)
	}
	for _, l := range built.LayerDescs {
		if !strings.Contains(out, l.Digest.String()) {
			t.Errorf("layer %s collected once its image was removed: no lease kept it", l.Digest)
		}
	}
}

// TestParallelPullImplicitDirs: directories an upper layer's tar creates
// only implicitly (no entry of their own) look as under overlayfs, where
// containerd's unpack gives them the attributes of the layer below,
// although parallel pull unpacks the upper layer before the lower one is
// in place.
func TestParallelPullImplicitDirs(t *testing.T) {
	e := startEnv(t, parallelConfig)
	ctx := testContext(t, 5*time.Minute)
	sticky := image.Entry{Name: "data/t", Type: tar.TypeDir, Mode: 0o1777, UID: 1000, GID: 1001, ModTime: epoch,
		Xattrs: map[string]string{"user.k": "v"}}
	spec := image.Spec{
		Layers: []image.Layer{
			{Entries: []image.Entry{dir("bin"), {Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary},
				dir("data"), sticky}},
			// data/t and data/u exist only as parents of these files.
			{Entries: []image.Entry{file("data/t/x", []byte("x\n")), file("data/u/v", []byte("v\n"))}},
		},
		Entrypoint: []string{"/bin/probe"},
	}
	ref := pushPlain(t, e, "parallel/implicit:latest", buildImage(t, spec))
	walk := func(snapshotter string) string {
		out, err := e.Nerdctl(ctx, "--snapshotter", snapshotter, "run", "--rm", "--net", "none", ref, "walk", "/data")
		if err != nil {
			t.Fatalf("walk under %s: %v", snapshotter, err)
		}
		return probeLines(out)
	}
	pulled, full := walk("soci"), walk("overlayfs")
	// An implicit directory's mtime is the time of its unpack, under both.
	pulled, full = maskMtimes(pulled, "/data/t ", "/data/u "), maskMtimes(full, "/data/t ", "/data/u ")
	if !strings.Contains(full, "/data/t d 1777 1000 1001") {
		t.Fatalf("overlayfs walk lacks the sticky directory owned by 1000: the image does not test what it should:\n%s", full)
	}
	if pulled != full {
		t.Errorf("parallel-pulled walk differs from overlayfs walk:\n%s", diffLines(pulled, full, 20))
	}
}

// maskMtimes blanks the mtime field (the 7th) of the walk lines of paths.
func maskMtimes(walk string, paths ...string) string {
	lines := strings.Split(walk, "\n")
	for i, l := range lines {
		for _, p := range paths {
			if strings.HasPrefix(l, p) {
				f := strings.Fields(l)
				if len(f) > 6 {
					f[6] = "-"
				}
				lines[i] = strings.Join(f, " ")
			}
		}
	}
	return strings.Join(lines, "\n")
}
