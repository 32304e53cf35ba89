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

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

const v1DaemonConfig = `
[pull_modes.soci_v1]
  enable = true
`

// fuseLayers counts the lazily loaded layers mounted under the daemon's root.
func fuseLayers(t *testing.T, e *harness.Env) int {
	t.Helper()
	mounts, err := harness.Mounts(e.Daemon.Root)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, typ := range mounts {
		if typ == "fuse.rawBridge" {
			n++
		}
	}
	return n
}

func buildImage(t *testing.T, spec image.Spec) *image.Image {
	t.Helper()
	img, err := image.Build(spec)
	if err != nil {
		t.Fatalf("build image: %v", err)
	}
	return img
}

func pushV2(t *testing.T, e *harness.Env, name string, img *image.Image, opts sociimage.Options) string {
	t.Helper()
	ref := e.Registry.Host + "/" + name
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, _, err := sociimage.PushV2(ctx, ref, img, opts); err != nil {
		t.Fatalf("push SOCI v2 image %s: %v", ref, err)
	}
	return ref
}

func pushV1(t *testing.T, e *harness.Env, name string, img *image.Image, opts sociimage.Options) string {
	t.Helper()
	ref := e.Registry.Host + "/" + name
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := sociimage.PushV1(ctx, ref, img, opts); err != nil {
		t.Fatalf("push image %s with a SOCI v1 index: %v", ref, err)
	}
	return ref
}

// runSums runs `probe sha256 paths...` in ref with the soci snapshotter;
// flags go before nerdctl's subcommand (e.g. --hosts-dir DIR).
func runSums(t *testing.T, ctx context.Context, e *harness.Env, ref string, paths []string, flags ...string) string {
	t.Helper()
	args := append(append(append([]string{}, flags...), "--snapshotter", "soci", "run", "--rm", "--net", "none", ref, "sha256"), paths...)
	out, err := e.Nerdctl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkLazyRun runs img (pushed as ref) lazily, checks every probed file
// and that wantLazy layers are mounted through FUSE.
func checkLazyRun(t *testing.T, ctx context.Context, e *harness.Env, ref string, img layeredImage, wantLazy int, flags ...string) {
	t.Helper()
	checkSums(t, runSums(t, ctx, e, ref, img.paths, flags...), img.want)
	if n := fuseLayers(t, e); n != wantLazy {
		t.Errorf("want %d lazily loaded layers mounted, got %d", wantLazy, n)
	}
}

// TestLazyV2: a SOCI v2 image runs with every layer lazily loaded.
func TestLazyV2(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	ref := pushV2(t, e, "lazy/v2:latest", buildImage(t, img.spec), sociimage.Options{SpanSize: 1 << 20})
	checkLazyRun(t, ctx, e, ref, img, 3)
}

// TestLazyV1: a v1 index is found through the referrers fallback tag when
// soci_v1 is enabled; with it disabled the image is pulled normally.
func TestLazyV1(t *testing.T) {
	img := newLayeredImage()
	built := buildImage(t, img.spec)
	t.Run("enabled", func(t *testing.T) {
		e := startEnv(t, v1DaemonConfig)
		ctx := testContext(t, 5*time.Minute)
		ref := pushV1(t, e, "lazy/v1:latest", built, sociimage.Options{SpanSize: 1 << 20})
		checkLazyRun(t, ctx, e, ref, img, 3)
	})
	t.Run("disabled", func(t *testing.T) {
		e := startEnv(t, defaultDaemonConfig)
		ctx := testContext(t, 5*time.Minute)
		ref := pushV1(t, e, "lazy/v1:latest", built, sociimage.Options{SpanSize: 1 << 20})
		checkLazyRun(t, ctx, e, ref, img, 0)
	})
}

// TestSparseIndex: layers without a zTOC are unpacked locally, the others
// are lazily loaded, and the container sees all of them.
func TestSparseIndex(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	ref := pushV2(t, e, "lazy/sparse:latest", buildImage(t, img.spec), sociimage.Options{SpanSize: 1 << 20, SkipLayers: []int{1}})
	checkLazyRun(t, ctx, e, ref, img, 2)
}

// walkTree runs the probe's walk of /tree in a container of ref under
// snapshotter and returns its lines.
//
// The probe ends its walk with a walk-done line. A run whose output lacks
// it, although the container exited 0, lost the end of its output on the
// way to nerdctl (seen once in CI, under overlayfs, the output cut in the
// middle of a line): that run is repeated once, and a second such run fails
// the test.
func walkTree(t *testing.T, ctx context.Context, e *harness.Env, ref, snapshotter string) string {
	t.Helper()
	var lines string
	for attempt := 1; attempt <= 2; attempt++ {
		out, err := e.Nerdctl(ctx, "--snapshotter", snapshotter, "run", "--rm", "--net", "none", ref, "walk", "/tree")
		if err != nil {
			t.Fatalf("walk under %s: %v", snapshotter, err)
		}
		if lines = probeLines(out); strings.Contains(lines, "walk-done") {
			return lines
		}
		t.Logf("walk under %s, attempt %d: the output ends without walk-done:\n%s", snapshotter, attempt, tail(lines, 3))
	}
	t.Fatalf("walk under %s: two runs lost the end of their output", snapshotter)
	return lines
}

// TestContentEquality walks a tree of every kind of tar entry inside a
// lazily loaded container and under overlayfs: the walks must be equal.
func TestContentEquality(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
	ctx := testContext(t, 10*time.Minute)
	spec := treeSpec()
	ref := pushV2(t, e, "lazy/tree:latest", buildImage(t, spec), sociimage.Options{SpanSize: 1 << 20})
	walk := func(snapshotter string) string { return walkTree(t, ctx, e, ref, snapshotter) }
	lazy := walk("soci")
	if n := fuseLayers(t, e); n != len(spec.Layers) {
		t.Errorf("want %d lazily loaded layers, got %d", len(spec.Layers), n)
	}
	full := walk("overlayfs")
	if !strings.Contains(full, "walk-done") {
		t.Fatalf("overlayfs walk did not finish:\n%s", tail(full, 20))
	}
	if count := strings.Count(full, "\n"); count < 5000 {
		t.Errorf("tree has only %d entries, want >= 5000", count)
	}
	for _, want := range []string{"/tree/null c 0666 0 0 0", "/tree/fifo p ", "/tree/d00/f007 f 4755 ", "user.idx=",
		"/tree/d03/link l ", "/tree/opaque/new f ", "/bottom f ", "/tree/sticky d 1777 ", "名前"} {
		if !strings.Contains(full, want) {
			t.Errorf("overlayfs walk lacks %q: the image does not exercise that kind of entry", want)
		}
	}
	for _, gone := range []string{"/tree/d00/f005 ", "/tree/d01/", "/tree/opaque/old "} {
		if strings.Contains(full, gone) || strings.Contains(lazy, gone) {
			t.Errorf("%q was deleted by an upper layer but is listed", gone)
		}
	}
	if lazy != full {
		t.Errorf("lazy walk differs from overlayfs walk:\n%s", diffLines(lazy, full, 20))
	}
}

// TestLaziness: a container that reads a few MB of a large image starts
// after fetching a small fraction of it.
func TestLaziness(t *testing.T) {
	// What demand reads fetch is measured: the background walk, which
	// starts at the mount by default and on loopback would fetch the
	// whole image before the container is ready, waits 30 s here.
	e := startEnv(t, defaultDaemonConfig+lazinessConfig)
	ctx := testContext(t, 10*time.Minute)
	spec := sparseSpec(4, 55<<20)
	built := buildImage(t, spec)
	var size int64
	for _, l := range built.LayerDescs {
		size += l.Size
	}
	ref := pushV2(t, e, "lazy/big:latest", built, sociimage.Options{SpanSize: 1 << 20})
	before, err := harness.RegistryBytesServed(e.Registry.Log())
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", ref,
		"read-bytes", "/big/blob-0", "1048576", "--", "read-bytes", "/big/blob-3", "2097152", "--", "ready")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "ready") {
		t.Fatalf("container did not get ready:\n%s", out)
	}
	after, err := harness.RegistryBytesServed(e.Registry.Log())
	if err != nil {
		t.Fatal(err)
	}
	fetched := after - before
	t.Logf("image %d bytes compressed; registry served %d bytes (%.2f%%) up to ready", size, fetched, 100*float64(fetched)/float64(size))
	if size < 200<<20 {
		t.Fatalf("image is only %d bytes, the test wants >= 200 MB", size)
	}
	if fetched*10 >= size {
		t.Errorf("fetched %d of %d bytes before ready: not lazy (want < 10%%)", fetched, size)
	}
	if fetched == 0 {
		t.Errorf("registry access log shows no blob bytes served: the count is broken")
	}
}

// walkLaterConfig starts the background walk 5 s after each mount (the
// cap before the walk started at the mount), time enough for a test's
// container to read lazily, without waiting long for layers to be local.
const walkLaterConfig = `
[background_fetch]
  silence_period_msec = 5000
`

// lazinessConfig holds back the background walk for TestLaziness
// ([background_fetch] silence_period_msec is 30 s by default).
const lazinessConfig = `
[limits]
  background_max_delay_msec = 30000
`

// TestCorruptSpan: a span whose bytes in the registry no longer match the
// zTOC gives EIO for the files in it, the rest of the image reads, the
// daemon counts verification failures (and no fetch failure), and its log
// names the layer and span.
func TestCorruptSpan(t *testing.T) {
	metricsCfg, url := metricsConfig(t)
	e := startEnv(t, metricsCfg+defaultDaemonConfig)
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	built := buildImage(t, img.spec)
	ref := pushV2(t, e, "lazy/corrupt:latest", built, sociimage.Options{SpanSize: 1 << 20})
	victim := built.LayerDescs[1] // holds /data/b.bin, > 3 spans
	data := filepath.Join(e.Registry.Storage, "docker/registry/v2/blobs/sha256",
		victim.Digest.Encoded()[:2], victim.Digest.Encoded(), "data")
	blob, err := os.ReadFile(data)
	if err != nil {
		t.Fatalf("read blob in registry storage: %v", err)
	}
	for i := len(blob) / 2; i < len(blob)/2+64; i++ {
		blob[i] ^= 0xff
	}
	if err := os.WriteFile(data, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	out := runSums(t, ctx, e, ref, img.paths)
	want := map[string]string{}
	for p, w := range img.want {
		if p != "/data/b.bin" {
			want[p] = w
		}
	}
	checkSums(t, out, want)
	if !strings.Contains(out, "/data/b.bin ERROR") || !strings.Contains(out, "input/output error") {
		t.Errorf("reading the corrupted file: want an I/O error, got:\n%s", out)
	}
	samples := scrape(t, url)
	if v := failures(samples, "verification"); v < 1 {
		t.Errorf(`soci_failures_total{kind="verification"} = %v, want >= 1`, v)
	}
	if v := failures(samples, "fetch"); v != 0 {
		t.Errorf(`soci_failures_total{kind="fetch"} = %v, want 0: the registry answered every request`, v)
	}
	// The log line is the contract here: the README's troubleshooting
	// section tells an operator whose read fails with EIO that the daemon
	// log names the layer and span ("span digests do not match").
	logData, err := os.ReadFile(e.Daemon.Log())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(string(logData), "\n") {
		if strings.Contains(line, victim.Digest.String()) && strings.Contains(line, "span=") && strings.Contains(line, "span digests do not match") {
			found = true
		}
	}
	if !found {
		t.Errorf("daemon log has no %q line naming layer %s and its span", "span digests do not match", victim.Digest)
	}
}

// treeSpec is three layers with >= 5000 entries of every tar type: files of
// 0 B to more than three 1 MiB spans, dirs, symlinks, hardlinks, a fifo, a
// char device, xattrs, whiteouts, an opaque dir, unicode names, deep paths.
func treeSpec() image.Spec {
	var l1, l2, l3 []image.Entry
	l1 = append(l1, dir("bin"), image.Entry{Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary}, dir("tree"))
	for d := 0; d < 50; d++ {
		dn := fmt.Sprintf("tree/d%02d", d)
		l1 = append(l1, dir(dn))
		for f := 0; f < 100; f++ {
			e := image.Entry{Name: fmt.Sprintf("%s/f%03d", dn, f), Type: tar.TypeReg, Mode: 0o644, ModTime: epoch.Add(time.Duration(f) * time.Hour),
				UID: f % 3, GID: d % 4, Size: int64((f * 937) % 9000), Seed: int64(d*1000 + f)}
			if f%10 == 0 {
				e.Xattrs = map[string]string{"user.idx": fmt.Sprint(f), "user.dir": dn}
			}
			if f == 7 {
				e.Mode = 0o4755
			}
			l1 = append(l1, e)
		}
		l1 = append(l1, image.Entry{Name: dn + "/link", Type: tar.TypeSymlink, Linkname: "f001", Mode: 0o777, ModTime: epoch},
			image.Entry{Name: dn + "/hard", Type: tar.TypeLink, Linkname: dn + "/f002", ModTime: epoch})
	}
	l1 = append(l1,
		image.Entry{Name: "tree/big", Type: tar.TypeReg, Mode: 0o600, ModTime: epoch, Size: 3<<20 + 4321, Seed: 99},
		image.Entry{Name: "tree/empty", Type: tar.TypeReg, Mode: 0o644, ModTime: epoch},
		image.Entry{Name: "tree/fifo", Type: tar.TypeFifo, Mode: 0o644, ModTime: epoch},
		image.Entry{Name: "tree/null", Type: tar.TypeChar, Mode: 0o666, ModTime: epoch, Devmajor: 1, Devminor: 3},
		image.Entry{Name: "tree/sticky", Type: tar.TypeDir, Mode: 0o1777, ModTime: epoch},
		file("tree/ünïcödé-名前.txt", []byte("unicode\n")),
		dir("tree/opaque"), file("tree/opaque/old", []byte("old\n")),
	)
	deep := "tree/deep"
	l1 = append(l1, dir(deep))
	for i := 0; i < 40; i++ {
		deep += fmt.Sprintf("/l%d", i)
		l1 = append(l1, dir(deep))
	}
	l1 = append(l1, file(deep+"/bottom", []byte("deep\n")))
	l2 = append(l2, dir("tree"), dir("tree/d00"), image.Whiteout("tree/d00/f005"), image.Whiteout("tree/d01"),
		dir("tree/opaque"), image.OpaqueDir("tree/opaque"), file("tree/opaque/new", []byte("new\n")),
		dir("tree/d02"), image.Entry{Name: "tree/d02/f003", Type: tar.TypeReg, Mode: 0o640, ModTime: epoch, Size: 2<<20 + 5, Seed: 7})
	l3 = append(l3, dir("tree"), dir("tree/l3"))
	for f := 0; f < 200; f++ {
		l3 = append(l3, image.Entry{Name: fmt.Sprintf("tree/l3/x%03d", f), Type: tar.TypeReg, Mode: 0o644, ModTime: epoch, Size: int64(f * 100), Seed: int64(f)})
	}
	return image.Spec{Layers: []image.Layer{{Entries: l1}, {Entries: l2}, {Entries: l3}}, Entrypoint: []string{"/bin/probe"}}
}

// sparseSpec is a small base layer with the probe plus n layers of one
// incompressible file of size bytes each, /big/blob-<i>.
func sparseSpec(n int, size int64) image.Spec {
	layers := []image.Layer{{Entries: []image.Entry{dir("bin"), {Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary}}}}
	for i := 0; i < n; i++ {
		layers = append(layers, image.Layer{Entries: []image.Entry{dir("big"),
			{Name: fmt.Sprintf("big/blob-%d", i), Type: tar.TypeReg, Mode: 0o644, ModTime: epoch, Size: size, Seed: int64(100 + i)}}})
	}
	return image.Spec{Layers: layers, Entrypoint: []string{"/bin/probe"}}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// diffLines shows the first n lines that differ between a and b.
func diffLines(a, b string, n int) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	inB := map[string]bool{}
	for _, l := range bl {
		inB[l] = true
	}
	inA := map[string]bool{}
	for _, l := range al {
		inA[l] = true
	}
	var out []string
	for _, l := range al {
		if !inB[l] && len(out) < n {
			out = append(out, "lazy only:     "+l)
		}
	}
	for _, l := range bl {
		if !inA[l] && len(out) < 2*n {
			out = append(out, "overlayfs only: "+l)
		}
	}
	return strings.Join(out, "\n")
}

// probeLines keeps the probe's own output lines (paths and walk-done),
// dropping nerdctl's pull progress and log lines that share the output.
func probeLines(out string) string {
	var b strings.Builder
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "/") || strings.HasPrefix(line, "\"/") || strings.HasPrefix(line, "walk-done") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}
