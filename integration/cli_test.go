package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const sociFlags = "--soci-span-size=2097152 --soci-min-layer-size=0"

// cliEnv starts the environment whose containerd builds and pushes with
// nerdctl and our soci CLI. The CLI's root (artifact database) is a temp
// dir, also for the soci that nerdctl runs.
func cliEnv(t *testing.T) *harness.Env {
	t.Setenv("SOCI_ROOT", filepath.Join(t.TempDir(), "soci-root"))
	return startEnv(t, defaultDaemonConfig)
}

func nerdctl(t *testing.T, ctx context.Context, e *harness.Env, args ...string) string {
	t.Helper()
	out, err := e.Nerdctl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sociCLI(t *testing.T, ctx context.Context, e *harness.Env, args ...string) string {
	t.Helper()
	out, err := e.Soci(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCLIPushV1: nerdctl push --snapshotter=soci (soci create + soci push)
// to a registry without a referrers API; a fresh containerd with soci_v1
// enabled then runs the image lazily. The local index and zTOCs are
// inspected with index/ztoc commands.
func TestCLIPushV1(t *testing.T) {
	fresh := startEnv(t, v1DaemonConfig) // owns the registry
	e := cliEnv(t)
	ctx := testContext(t, 8*time.Minute)
	img := newLayeredImage()
	src := pushImage(t, fresh.Registry.Host, "cli/src:latest", img.spec)
	dst := fresh.Registry.Host + "/cli/v1:latest"
	nerdctl(t, ctx, e, "pull", "-q", src)
	nerdctl(t, ctx, e, "tag", src, dst)
	nerdctl(t, ctx, e, append([]string{"push", "--snapshotter=soci"}, append(strings.Fields(sociFlags), dst)...)...)

	checkLazyRun(t, ctx, fresh, dst, img, 3)

	// The indices nerdctl's soci made live in SOCI_ROOT; inspect them there.
	root := os.Getenv("SOCI_ROOT")
	list := sociCLI(t, ctx, e, "--root", root, "index", "list", "--ref", dst)
	if !strings.Contains(list, "DIGEST") || !strings.Contains(list, "v1") || !strings.Contains(list, dst) {
		t.Errorf("index list:\n%s", list)
	}
	digests := strings.Fields(sociCLI(t, ctx, e, "--root", root, "index", "list", "-q", "--ref", dst))
	if len(digests) != 1 {
		t.Fatalf("want one index of %s, got %q", dst, digests)
	}
	var manifest ocispec.Manifest
	if err := json.Unmarshal([]byte(sociCLI(t, ctx, e, "--root", root, "index", "info", digests[0])), &manifest); err != nil {
		t.Fatalf("index info is not JSON: %v", err)
	}
	if manifest.Subject == nil || len(manifest.Layers) != 3 || manifest.Config.MediaType != "application/vnd.amazon.soci.index.v1+json" {
		t.Errorf("index info: unexpected index %+v", manifest)
	}
	checkGetFile(t, ctx, e, root, dst, "data/b.bin", img.want["/data/b.bin"])

	// rm removes it from the list.
	sociCLI(t, ctx, e, "--root", root, "index", "rm", digests[0])
	if left := strings.TrimSpace(sociCLI(t, ctx, e, "--root", root, "index", "list", "-q", "--ref", dst)); left != "" {
		t.Errorf("after index rm, index list still shows %q", left)
	}
}

// checkGetFile finds the zTOC of ref that lists path and extracts path
// with it: the bytes must hash to want ("/path sha256").
func checkGetFile(t *testing.T, ctx context.Context, e *harness.Env, root, ref, path, want string) {
	t.Helper()
	ztocs := strings.Fields(sociCLI(t, ctx, e, "--root", root, "ztoc", "list", "-q", "--image-ref", ref))
	if len(ztocs) != 3 {
		t.Fatalf("want 3 zTOCs for %s, got %q", ref, ztocs)
	}
	for _, z := range ztocs {
		var info struct {
			Version  string `json:"version"`
			NumSpans int    `json:"num_spans"`
			Files    []struct {
				Filename string `json:"filename"`
			} `json:"files"`
		}
		if err := json.Unmarshal([]byte(sociCLI(t, ctx, e, "--root", root, "ztoc", "info", z)), &info); err != nil {
			t.Fatalf("ztoc info %s is not JSON: %v", z, err)
		}
		for _, f := range info.Files {
			if f.Filename != path {
				continue
			}
			out := filepath.Join(t.TempDir(), "out")
			sociCLI(t, ctx, e, "--root", root, "ztoc", "get-file", "-o", out, z, path)
			data, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			if got := "/" + path + " " + hex.EncodeToString(sum[:]); got != want {
				t.Errorf("get-file %s: got %q, want %q", path, got, want)
			}
			stdout := sociCLI(t, ctx, e, "--root", root, "ztoc", "get-file", z, path)
			if stdout != string(data) {
				t.Errorf("get-file to stdout differs from -o (%d vs %d bytes)", len(stdout), len(data))
			}
			return
		}
	}
	t.Errorf("no zTOC of %s lists %s", ref, path)
}

// TestCLIConvert: nerdctl image convert --soci then nerdctl push; a fresh
// containerd with the default config runs the v2 image lazily.
func TestCLIConvert(t *testing.T) {
	fresh := startEnv(t, defaultDaemonConfig)
	e := cliEnv(t)
	ctx := testContext(t, 8*time.Minute)
	img := newLayeredImage()
	src := pushImage(t, fresh.Registry.Host, "cli/plain:latest", img.spec)
	dst := fresh.Registry.Host + "/cli/v2:latest"
	nerdctl(t, ctx, e, "pull", "-q", src)
	nerdctl(t, ctx, e, append([]string{"image", "convert", "--soci"}, append(strings.Fields(sociFlags), src, dst)...)...)
	nerdctl(t, ctx, e, "push", dst)

	checkLazyRun(t, ctx, fresh, dst, img, 3)
}

// TestCLIMultiPlatform: a two-platform image (the second platform's image
// is synthetic, never run) converts with --all-platforms and with one
// --platform; platforms not converted stay in the index.
func TestCLIMultiPlatform(t *testing.T) {
	e := cliEnv(t)
	ctx := testContext(t, 5*time.Minute)
	host := e.Registry.Host
	native := "linux/" + runtime.GOARCH
	other := ocispec.Platform{OS: "linux", Architecture: "arm64"}
	if runtime.GOARCH == "arm64" {
		other.Architecture = "amd64"
	}
	spec := newLayeredImage().spec
	a := buildImage(t, spec)
	spec.Platform = other
	b := buildImage(t, spec)
	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for tag, im := range map[string]*image.Image{"a": a, "b": b} {
		if err := image.Push(pctx, host+"/cli/multi:"+tag, im); err != nil {
			t.Fatal(err)
		}
	}
	ref := host + "/cli/multi:latest"
	if _, err := image.PushIndex(pctx, ref, []ocispec.Descriptor{a.ManifestDesc, b.ManifestDesc}, nil); err != nil {
		t.Fatal(err)
	}
	nerdctl(t, ctx, e, "pull", "-q", "--all-platforms", ref)

	for _, tc := range []struct {
		name      string
		flags     []string
		sociCount int
	}{
		{"all", []string{"--all-platforms"}, 2},
		{"one", []string{"--platform", native}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := host + "/cli/multi:soci-" + tc.name
			args := append([]string{"convert", "--span-size", "2097152", "--min-layer-size", "0"}, tc.flags...)
			sociCLI(t, ctx, e, append(args, ref, dst)...)
			idx := imageIndex(t, ctx, e, dst)
			if len(idx.Manifests) != 2+tc.sociCount {
				t.Fatalf("converted index has %d manifests, want %d: %+v", len(idx.Manifests), 2+tc.sociCount, idx.Manifests)
			}
			annotated, socis := 0, 0
			for _, m := range idx.Manifests {
				if m.ArtifactType == "application/vnd.amazon.soci.index.v2+json" {
					socis++
					if m.Annotations["com.amazon.soci.image-manifest-digest"] == "" || m.Platform == nil {
						t.Errorf("SOCI index entry lacks manifest digest or platform: %+v", m)
					}
				} else if m.Annotations["com.amazon.soci.index-digest"] != "" {
					annotated++
				}
			}
			if socis != tc.sociCount || annotated != tc.sociCount {
				t.Errorf("want %d SOCI entries and annotated manifests, got %d and %d", tc.sociCount, socis, annotated)
			}
		})
	}
}

// imageIndex reads the OCI image index that image ref points to.
func imageIndex(t *testing.T, ctx context.Context, e *harness.Env, ref string) ocispec.Index {
	t.Helper()
	out, err := e.Ctr(ctx, "images", "ls")
	if err != nil {
		t.Fatal(err)
	}
	var f []string
	for _, line := range strings.Split(out, "\n") {
		if fs := strings.Fields(line); len(fs) > 2 && fs[0] == ref {
			f = fs
		}
	}
	if f == nil {
		t.Fatalf("ctr images ls has no %s:\n%s", ref, out)
	}
	data, err := e.Ctr(ctx, "content", "get", f[2])
	if err != nil {
		t.Fatal(err)
	}
	var idx ocispec.Index
	if i := strings.Index(data, "{"); i > 0 {
		data = data[i:] // ctr's log lines share the output
	}
	if err := json.Unmarshal([]byte(data), &idx); err != nil {
		t.Fatalf("image %s: %v", ref, err)
	}
	return idx
}

// TestCLIErrors: failures are one line on stderr and a non-zero exit.
func TestCLIErrors(t *testing.T) {
	e := cliEnv(t)
	ctx := testContext(t, 3*time.Minute)
	src := pushImage(t, e.Registry.Host, "cli/err:latest", newLayeredImage().spec)
	nerdctl(t, ctx, e, "pull", "-q", src)
	for _, args := range [][]string{
		{"create", "example.invalid/none:latest"},
		{"create", "--platform", "linux/s390x", src},
		{"push", "--plain-http", src},
		{"convert", src, "no-tag@sha256:" + strings.Repeat("0", 64)},
	} {
		_, err := e.Soci(ctx, args...)
		if err == nil {
			t.Errorf("soci %v succeeded", args)
			continue
		}
		if msg := err.Error(); strings.Count(msg, "\n") > 0 || !strings.Contains(msg, "soci: ") {
			t.Errorf("soci %v: want one error line, got %q", args, msg)
		}
	}
	out, err := e.Soci(ctx, "--version")
	if err != nil || !strings.HasPrefix(out, "soci version v0.") {
		t.Errorf("soci --version: %q %v", out, err)
	}
}
