package integration

import (
	"archive/tar"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// TestLazyRestartWithoutRegistry: the lazily loaded layers stay mounted
// when the daemon stops (their FUSE host outlives it); once the host is
// gone too (cleanup), a daemon start mounts them again from local state
// (index, zTOCs, cached spans), with the registry gone.
func TestLazyRestartWithoutRegistry(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	ref := pushV2(t, e, "lazy/restart:latest", buildImage(t, img.spec), sociimage.Options{SpanSize: 1 << 20})
	checkSums(t, runSums(t, ctx, e, ref, img.paths), img.want)
	if err := e.Daemon.Stop(); err != nil {
		t.Fatalf("daemon did not stop cleanly: %v", err)
	}
	if n := fuseLayers(t, e); n != 3 {
		t.Errorf("%d lazily loaded layers mounted after the daemon stopped, want all 3 (the FUSE host serves them)", n)
	}
	if err := e.Daemon.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if n := fuseLayers(t, e); n != 0 {
		t.Errorf("%d lazily loaded layers still mounted after cleanup", n)
	}
	if n := len(e.Daemon.HostPids()); n != 0 {
		t.Errorf("%d FUSE hosts still run after cleanup", n)
	}
	if err := e.Registry.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := e.Daemon.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if n := fuseLayers(t, e); n != 3 {
		t.Errorf("after restart: want 3 lazily loaded layers mounted again, got %d", n)
	}
	checkSums(t, runSums(t, ctx, e, ref, img.paths), img.want)
}

// TestMinLayerSize: layers below [snapshotter] min_layer_size are unpacked
// normally even though the index has zTOCs for them.
func TestMinLayerSize(t *testing.T) {
	e := startEnv(t, "[snapshotter]\n  min_layer_size = 1048576\n")
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	built := buildImage(t, img.spec)
	big := 0
	for _, l := range built.LayerDescs {
		if l.Size >= 1<<20 {
			big++
		}
	}
	if big == 0 || big == len(built.LayerDescs) {
		t.Fatalf("test image needs layers on both sides of 1 MiB")
	}
	ref := pushV2(t, e, "lazy/minsize:latest", built, sociimage.Options{SpanSize: 1 << 20})
	checkSums(t, runSums(t, ctx, e, ref, img.paths), img.want)
	if n := fuseLayers(t, e); n != big {
		t.Errorf("want %d lazily loaded layers (those >= 1 MiB), got %d", big, n)
	}
}

// TestTenLayerMount runs a ten-layer image lazily and reports how long the
// daemon took to mount each layer (figures for the issue note; no timing is
// asserted).
func TestTenLayerMount(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
	ctx := testContext(t, 5*time.Minute)
	layers := []image.Layer{{Entries: []image.Entry{dir("bin"), {Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary}}}}
	for i := 1; i < 10; i++ {
		var entries []image.Entry
		d := fmt.Sprintf("l%d", i)
		entries = append(entries, dir(d))
		for f := 0; f < 500; f++ {
			entries = append(entries, image.Entry{Name: fmt.Sprintf("%s/f%03d", d, f), Type: tar.TypeReg, Mode: 0o644, ModTime: epoch, Size: 4096, Seed: int64(i*1000 + f)})
		}
		layers = append(layers, image.Layer{Entries: entries})
	}
	ref := pushV2(t, e, "lazy/ten:latest", buildImage(t, image.Spec{Layers: layers, Entrypoint: []string{"/bin/probe"}}), sociimage.Options{SpanSize: 1 << 20})
	start := time.Now()
	if _, err := e.Nerdctl(ctx, "--snapshotter", "soci", "pull", "--quiet", ref); err != nil {
		t.Fatal(err)
	}
	pulled := time.Since(start)
	out, err := e.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", ref, "sha256", "/l9/f499", "--", "ready")
	if err != nil || !strings.Contains(out, "ready") {
		t.Fatalf("run: %v\n%s", err, out)
	}
	if n := fuseLayers(t, e); n != 10 {
		t.Errorf("want 10 lazily loaded layers, got %d", n)
	}
	logData, err := os.ReadFile(e.Daemon.Log())
	if err != nil {
		t.Fatal(err)
	}
	took := regexp.MustCompile(`layer mounted lazily.*took="?([0-9.]+[a-zµ]+)`)
	var mounts []string
	for _, m := range took.FindAllStringSubmatch(string(logData), -1) {
		mounts = append(mounts, m[1])
	}
	if len(mounts) != 10 {
		t.Errorf("want 10 mount lines in the daemon log, got %d", len(mounts))
	}
	t.Logf("10-layer image: pull (all layers mounted) %s, ready %s; per-layer mount times: %s",
		pulled.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), strings.Join(mounts, " "))
}
