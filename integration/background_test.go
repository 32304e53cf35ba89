package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// seededSum is the `probe sha256` line of a file built by image.RandomFile
// (or an Entry with Size and Seed): ChaCha8 keyed by the seed.
func seededSum(path string, seed, size int64) string {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(uint64(seed) >> (8 * i))
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(rand.NewChaCha8(key), size)); err != nil {
		panic(err)
	}
	return path + " " + hex.EncodeToString(h.Sum(nil))
}

// TestBackgroundFetch: after a container of a ~220 MB image ran lazily, the
// background fetcher makes every layer local and verifies it against its
// digest (a verified marker per layer on disk, the completed-layers metric,
// no failure counted); then, with the registry stopped, a container reading
// every byte of every file gets the right bytes with no span fetched. It logs
// how long the image took to become local.
func TestBackgroundFetch(t *testing.T) {
	metricsCfg, url := metricsConfig(t)
	e := startEnv(t, metricsCfg+defaultDaemonConfig)
	ctx := testContext(t, 10*time.Minute)
	const n, size = 4, 55 << 20
	spec := sparseSpec(n, size)
	built := buildImage(t, spec)
	var total int64
	for _, l := range built.LayerDescs {
		total += l.Size
	}
	ref := pushV2(t, e, "background/big:latest", built, sociimage.Options{SpanSize: 1 << 20})

	out, err := e.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", ref,
		"read-bytes", "/big/blob-0", "1048576", "--", "ready")
	if err != nil || !strings.Contains(out, "ready") {
		t.Fatalf("lazy container: %v\n%s", err, out)
	}
	started := time.Now()
	waitLocal(t, e, built.LayerDescs, 5*time.Minute)
	took := time.Since(started)
	t.Logf("image of %d compressed bytes (%d layers lazily loaded) fully local %v after the container ran (the walk starts at the mount)",
		total, len(built.LayerDescs), took.Round(time.Millisecond))
	// The marker is written just before the layer is counted.
	samples := waitMetric(t, url, "soci_background_layers_completed_total", float64(len(built.LayerDescs)), 10*time.Second)
	if v := samples["soci_background_layers_completed_total"]; v != float64(len(built.LayerDescs)) {
		t.Errorf("soci_background_layers_completed_total = %v, want %d", v, len(built.LayerDescs))
	}
	t.Logf("background fetcher fetched %v compressed bytes", samples["soci_background_fetch_bytes_total"])
	for _, kind := range []string{"verification", "fetch", "span_load", "unverified", "ztoc_mismatch"} {
		if v := failures(samples, kind); v != 0 {
			t.Errorf("soci_failures_total{kind=%q} = %v, want 0", kind, v)
		}
	}
	if bad := markedLayers(t, e, "bad"); len(bad) != 0 {
		t.Errorf("layers marked bad: %v", bad)
	}
	served, err := harness.RegistryBytesServed(e.Registry.Log())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("registry served %d blob bytes in all (%.2fx the image)", served, float64(served)/float64(total))

	if err := e.Registry.Stop(); err != nil {
		t.Fatalf("stop registry: %v", err)
	}
	paths := []string{"/bin/probe"}
	want := map[string]string{}
	sum := sha256.Sum256(probeBinary)
	want["/bin/probe"] = "/bin/probe " + hex.EncodeToString(sum[:])
	for i := range n {
		p := fmt.Sprintf("/big/blob-%d", i)
		paths = append(paths, p)
		want[p] = seededSum(p, int64(100+i), size)
	}
	out = runSums(t, ctx, e, ref, paths)
	checkSums(t, out, want)
	if strings.Contains(out, "ERROR") {
		t.Errorf("reads failed with the registry stopped:\n%s", out)
	}
	after := scrape(t, url)
	if d := after["soci_span_cache_misses_total"] - samples["soci_span_cache_misses_total"]; d != 0 {
		t.Errorf("%v span reads missed the cache after the layers were local", d)
	}
	if after["soci_span_cache_hits_total"] <= samples["soci_span_cache_hits_total"] {
		t.Errorf("reading every file with the registry stopped hit no cached span")
	}
}

// TestBackgroundCorruptLayer: a layer whose blob was altered where no span
// covers it (the gzip header) reads correctly, but once the background
// fetcher has read all of it, it counts a verification failure and never
// marks the layer verified, while the image's other layers are.
func TestBackgroundCorruptLayer(t *testing.T) {
	metricsCfg, url := metricsConfig(t)
	e := startEnv(t, metricsCfg+defaultDaemonConfig)
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	built := buildImage(t, img.spec)
	ref := pushV2(t, e, "background/corrupt:latest", built, sociimage.Options{SpanSize: 1 << 20})
	victim := built.LayerDescs[1]
	data := registryBlobPath(e, victim.Digest.Encoded())
	blob, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	blob[4] ^= 0xff // the gzip header's mtime: inflating still works, the digest does not
	if err := os.WriteFile(data, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	checkSums(t, runSums(t, ctx, e, ref, img.paths), img.want)
	if n := fuseLayers(t, e); n != len(built.LayerDescs) {
		t.Fatalf("%d layers mounted lazily, want %d", n, len(built.LayerDescs))
	}
	samples := waitMetric(t, url, `soci_failures_total{kind="verification"}`, 1, 2*time.Minute)
	if v := failures(samples, "verification"); v != 1 {
		t.Errorf(`soci_failures_total{kind="verification"} = %v, want 1 (the corrupt layer)`, v)
	}
	others := append(append([]ocispec.Descriptor{}, built.LayerDescs[:1]...), built.LayerDescs[2:]...)
	waitVerified(t, e, others, time.Minute)
	if markedLayers(t, e, "verified")[victim.Digest] {
		t.Errorf("corrupt layer %s marked verified", victim.Digest)
	}
	// The marker is written just before the layer is counted.
	samples = waitMetric(t, url, "soci_background_layers_completed_total", float64(len(others)), 10*time.Second)
	if v := samples["soci_background_layers_completed_total"]; v != float64(len(others)) {
		t.Errorf("soci_background_layers_completed_total = %v, want %d", v, len(others))
	}
}

func registryBlobPath(e *harness.Env, hex string) string {
	return e.Registry.Storage + "/docker/registry/v2/blobs/sha256/" + hex[:2] + "/" + hex + "/data"
}
