package integration

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
)

// The daemon's observable state, read by the tests instead of its log: the
// background fetcher's markers on disk (docs/architecture.md, "The root
// directory") and its metrics endpoint.

// markedLayers returns the layers with a background marker of kind
// ("verified" or "bad") for any zTOC: the files
// <root>/fs/background/<kind>/<alg>/<hex>+<alg>-<ztoc hex>.
func markedLayers(t *testing.T, e *harness.Env, kind string) map[digest.Digest]bool {
	t.Helper()
	out := map[digest.Digest]bool{}
	base := filepath.Join(e.Daemon.Root, "fs", "background", kind)
	algs, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return out
	}
	if err != nil {
		t.Fatalf("read %s markers: %v", kind, err)
	}
	for _, alg := range algs {
		names, err := os.ReadDir(filepath.Join(base, alg.Name()))
		if err != nil {
			t.Fatalf("read %s markers: %v", kind, err)
		}
		for _, n := range names {
			hex, _, _ := strings.Cut(n.Name(), "+")
			out[digest.NewDigestFromEncoded(digest.Algorithm(alg.Name()), hex)] = true
		}
	}
	return out
}

// waitLocal checks that every layer of layers is mounted lazily (one FUSE
// mount each under the daemon's root) and waits until each is verified.
func waitLocal(t *testing.T, e *harness.Env, layers []ocispec.Descriptor, timeout time.Duration) {
	t.Helper()
	if n := fuseLayers(t, e); n != len(layers) {
		t.Fatalf("%d layers mounted lazily, want %d", n, len(layers))
	}
	waitVerified(t, e, layers, timeout)
}

// waitVerified waits until the background fetcher has marked every layer of
// layers verified on disk: its blob hashed to its digest, its zTOC matched
// it, and its spans are cached.
func waitVerified(t *testing.T, e *harness.Env, layers []ocispec.Descriptor, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		verified := markedLayers(t, e, "verified")
		var missing []string
		for _, l := range layers {
			if !verified[l.Digest] {
				missing = append(missing, l.Digest.String())
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, %d of %d layers are not marked verified: %v", timeout, len(missing), len(layers), missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metricsConfig is a daemon config line serving metrics on a free loopback
// port, and the URL to scrape.
func metricsConfig(t *testing.T) (cfg, url string) {
	t.Helper()
	port := freeTCPPort(t)
	return fmt.Sprintf("metrics_address = \"127.0.0.1:%d\"\n", port), fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
}

// waitMetric scrapes url until the sample series reaches at least want,
// and returns the last scrape.
func waitMetric(t *testing.T, url, series string, want float64, timeout time.Duration) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		samples := scrape(t, url)
		if samples[series] >= want {
			return samples
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, %s = %v, want >= %v", timeout, series, samples[series], want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// failures is the sample of soci_failures_total of kind.
func failures(samples map[string]float64, kind string) float64 {
	return samples[fmt.Sprintf(`soci_failures_total{kind=%q}`, kind)]
}
