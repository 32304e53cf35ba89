package integration

import (
	"archive/tar"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// fuseReads sums the FUSE READ requests of every layer
// (soci_fs_operation_count{operation_type="synchronous_read_count"}).
func fuseReads(samples map[string]float64) float64 {
	var n float64
	for series, v := range samples {
		if strings.HasPrefix(series, "soci_fs_operation_count{") && strings.Contains(series, `operation_type="synchronous_read_count"`) {
			n += v
		}
	}
	return n
}

// TestPassthrough: with [fuse] passthrough, once the layers are local a
// container reads files (among them files no read touched before, so not
// in the page cache, and one spread over several spans) with the right
// bytes and not one FUSE READ request: the kernel read them from backing
// files. The opens are counted as passthrough opens and the kernel did not
// refuse passthrough.
func TestPassthrough(t *testing.T) {
	metricsCfg, url := metricsConfig(t)
	// The walk held back: the first run must read through FUSE.
	e := startEnv(t, metricsCfg+defaultDaemonConfig+walkLaterConfig+"\n[fuse]\n  passthrough = true\n")
	ctx := testContext(t, 5*time.Minute)
	entries := []image.Entry{dir("data")}
	want := map[string]string{}
	var paths []string
	add := func(name string, size, seed int64) {
		entries = append(entries, image.Entry{Name: "data/" + name, Type: tar.TypeReg, Mode: 0o644, ModTime: epoch, Size: size, Seed: seed})
		p := "/data/" + name
		paths = append(paths, p)
		want[p] = seededSum(p, seed, size)
	}
	for i := range 4 {
		add(fmt.Sprintf("f%d", i), 300<<10+int64(i)*777, int64(10+i))
	}
	add("big", 3<<20+12345, 99) // over four 1 MiB spans
	spec := image.Spec{Layers: []image.Layer{
		{Entries: []image.Entry{dir("bin"), {Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary}}},
		{Entries: entries},
	}, Entrypoint: []string{"/bin/probe"}}
	built := buildImage(t, spec)
	ref := pushV2(t, e, "passthrough/files:latest", built, sociimage.Options{SpanSize: 1 << 20})

	// A first container reads one file lazily, through FUSE.
	checkSums(t, runSums(t, ctx, e, ref, paths[:1]), map[string]string{paths[0]: want[paths[0]]})
	waitLocal(t, e, built.LayerDescs, 3*time.Minute)
	before := scrape(t, url)
	if fuseReads(before) == 0 {
		t.Fatal("no FUSE READ counted for the lazy run: the test cannot tell passthrough from FUSE reads")
	}

	// A second container once everything is local.
	checkSums(t, runSums(t, ctx, e, ref, paths), want)
	after := scrape(t, url)
	if d := fuseReads(after) - fuseReads(before); d != 0 {
		t.Errorf("%v FUSE READ requests for a container run on local layers, want 0 (passthrough)", d)
	}
	const passOpens = `soci_fuse_opens_total{mode="passthrough"}`
	if d := after[passOpens] - before[passOpens]; d < float64(len(paths)) {
		t.Errorf("%s grew by %v, want at least %d (one per file read)", passOpens, d, len(paths))
	}
	if v := after["soci_fuse_passthrough_refused_total"]; v != 0 {
		t.Errorf("soci_fuse_passthrough_refused_total = %v, want 0", v)
	}
	t.Logf("second run: %v passthrough opens, %v FUSE opens", after[passOpens]-before[passOpens],
		after[`soci_fuse_opens_total{mode="fuse"}`]-before[`soci_fuse_opens_total{mode="fuse"}`])
}
