package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// layerField finds the layer digest in a daemon log line.
var layerField = regexp.MustCompile(`layer="?(sha256:[0-9a-f]{64})`)

// tookField and bytesField find a background completion's figures.
var (
	tookField  = regexp.MustCompile(`took=\S+`)
	bytesField = regexp.MustCompile(`bytes=\d+`)
)

// logLayers returns the layer digests named by daemon log lines containing
// msg, in order of first appearance.
func logLayers(t *testing.T, e *harness.Env, msg string) []string {
	t.Helper()
	data, err := os.ReadFile(e.Daemon.Log())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, msg) {
			continue
		}
		if m := layerField.FindStringSubmatch(line); m != nil && !seen[m[1]] {
			seen[m[1]] = true
			out = append(out, m[1])
		}
	}
	return out
}

// waitLocal waits until the daemon log reports every lazily mounted layer as
// fully local, and returns how many layers that was.
func waitLocal(t *testing.T, e *harness.Env, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		mounted := logLayers(t, e, "layer mounted lazily")
		local := map[string]bool{}
		for _, d := range logLayers(t, e, "layer fully local") {
			local[d] = true
		}
		var missing []string
		for _, d := range mounted {
			if !local[d] {
				missing = append(missing, d)
			}
		}
		if len(mounted) > 0 && len(missing) == 0 {
			return len(mounted)
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, %d of %d lazily mounted layers are not fully local: %v", timeout, len(missing), len(mounted), missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

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
// background fetcher makes every layer local (and verifies it against its
// digest); then, with the registry stopped, a container reading every byte
// of every file still works. It logs how long the image took to become local.
func TestBackgroundFetch(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
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
	layers := waitLocal(t, e, 5*time.Minute)
	took := time.Since(started)
	t.Logf("image of %d compressed bytes (%d layers lazily loaded) fully local %v after the container ran (includes the silence period, at most 5s)",
		total, layers, took.Round(time.Millisecond))
	if layers != len(built.LayerDescs) {
		t.Errorf("%d layers lazily loaded, want %d", layers, len(built.LayerDescs))
	}
	for _, line := range strings.Split(e.Daemon.LogTail(400), "\n") {
		if strings.Contains(line, "layer fully local") {
			t.Logf("%s %s %s", layerField.FindString(line), tookField.FindString(line), bytesField.FindString(line))
		}
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
	if strings.Contains(e.Daemon.LogTail(2000), "layer blob does not match its digest") {
		t.Error("daemon log reports a layer digest mismatch")
	}
}

// TestBackgroundCorruptLayer: a layer whose blob was altered where no span
// covers it (the gzip header) is reported at Error level, naming the layer,
// once the background fetcher has read all of it.
func TestBackgroundCorruptLayer(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
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
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var found bool
		for _, line := range strings.Split(e.Daemon.LogTail(5000), "\n") {
			if strings.Contains(line, "level=error") && strings.Contains(line, "does not match its digest") &&
				strings.Contains(line, victim.Digest.String()) {
				found = true
			}
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no error naming layer %s in the daemon log", victim.Digest)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, d := range logLayers(t, e, "layer fully local") {
		if d == victim.Digest.String() {
			t.Errorf("corrupt layer %s reported fully local", d)
		}
	}
}

func registryBlobPath(e *harness.Env, hex string) string {
	return e.Registry.Storage + "/docker/registry/v2/blobs/sha256/" + hex[:2] + "/" + hex + "/data"
}
