package integration

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// cacheBound is the span cache bound of TestCache: more than one image of
// cachedImage's size, less than two.
const cacheBound = 14 << 20

const boundedCacheConfig = `
[pull_modes.soci_v1]
  enable = false
[directory_cache]
  max_bytes = '14mb'
`

// cachedImage is a two-layer image: the probe (the same layer in every
// such image) and one 8 MiB incompressible file, /big/blob.
type cachedImage struct {
	ref   string
	paths []string
	want  map[string]string
	big   digest.Digest // the layer holding /big/blob
	ztoc  digest.Digest // its zTOC
	probe digest.Digest // the zTOC of the probe's layer
}

func pushCachedImage(t *testing.T, e *harness.Env, name string, seed int64) cachedImage {
	t.Helper()
	data := randomBytes(seed, 8<<20)
	spec := image.Spec{
		Layers: []image.Layer{
			{Entries: []image.Entry{dir("bin"), {Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary}}},
			{Entries: []image.Entry{dir("big"), file("big/blob", data)}},
		},
		Entrypoint: []string{"/bin/probe"},
	}
	built := buildImage(t, spec)
	ref := e.Registry.Host + "/" + name
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, idx, err := sociimage.PushV2(ctx, ref, built, sociimage.Options{SpanSize: 1 << 20})
	if err != nil {
		t.Fatalf("push SOCI v2 image %s: %v", ref, err)
	}
	sum := sha256.Sum256(data)
	img := cachedImage{
		ref: ref, paths: []string{"/big/blob"},
		want:  map[string]string{"/big/blob": "/big/blob " + hex.EncodeToString(sum[:])},
		big:   built.LayerDescs[1].Digest,
		ztoc:  idx.ZTOCByLayer[built.LayerDescs[1].Digest],
		probe: idx.ZTOCByLayer[built.LayerDescs[0].Digest],
	}
	if img.ztoc == "" || img.probe == "" {
		t.Fatalf("image %s: layers without zTOC: %v", ref, idx.ZTOCByLayer)
	}
	return img
}

// cacheBytes sums the sizes of the files under the daemon's span cache.
func cacheBytes(t *testing.T, e *harness.Env) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(cacheDir(e), func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func cacheDir(e *harness.Env) string { return filepath.Join(e.Daemon.Root, "fs", "cache") }

// layerCached reports whether the span cache holds anything of layer d.
func layerCached(e *harness.Env, d digest.Digest) bool {
	_, err := os.Stat(filepath.Join(cacheDir(e), string(d.Algorithm()), d.Encoded()))
	return err == nil
}

// ztocStored reports whether the daemon keeps zTOC d on disk.
func ztocStored(e *harness.Env, d digest.Digest) bool {
	_, err := os.Stat(filepath.Join(e.Daemon.Root, "fs", "index", "blobs", string(d.Algorithm()), d.Encoded()))
	return err == nil
}

// removeImage removes ref and waits until cond holds (containerd removes
// the snapshots in the background).
func removeImage(t *testing.T, ctx context.Context, e *harness.Env, ref string, cond func() (bool, string)) {
	t.Helper()
	if _, err := e.Nerdctl(ctx, "rmi", "-f", ref); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Ctr(ctx, "images", "rm", "--sync", ref); err != nil && !strings.Contains(err.Error(), "not found") {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after removing %s: %s", ref, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestCache: with a span cache bound smaller than two images, running one
// image after the other stays under the bound, the first image still runs
// (its evicted spans are fetched again), and removing an image frees its
// cached spans and zTOCs.
func TestCache(t *testing.T) {
	e := startEnv(t, boundedCacheConfig)
	ctx := testContext(t, 10*time.Minute)
	a := pushCachedImage(t, e, "cache/a:v1", 21)
	b := pushCachedImage(t, e, "cache/b:v1", 22)
	if a.probe != b.probe {
		t.Fatalf("the probe layer differs between the images: %s, %s", a.probe, b.probe)
	}
	run := func(t *testing.T, img cachedImage) {
		t.Helper()
		checkSums(t, runSums(t, ctx, e, img.ref, img.paths), img.want)
		if got := cacheBytes(t, e); got > cacheBound {
			t.Errorf("span cache holds %d bytes, over its bound of %d", got, cacheBound)
		} else {
			t.Logf("span cache holds %d bytes (bound %d)", got, cacheBound)
		}
	}

	t.Run("bounded", func(t *testing.T) {
		run(t, a)
		if got := cacheBytes(t, e); got < 8<<20 {
			t.Fatalf("span cache holds %d bytes after reading 8 MiB: nothing to bound", got)
		}
		run(t, b)
		if !layerCached(e, b.big) {
			t.Errorf("layer %s just read is not cached", b.big)
		}
	})

	t.Run("evicted spans are fetched again", func(t *testing.T) {
		// The kernel keeps the file's pages from the first run: drop them so
		// that the reads reach the daemon.
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0o200); err != nil {
			t.Fatalf("drop the page cache: %v", err)
		}
		before, err := harness.RegistryBytesServed(e.Registry.Log())
		if err != nil {
			t.Fatal(err)
		}
		run(t, a)
		after, err := harness.RegistryBytesServed(e.Registry.Log())
		if err != nil {
			t.Fatal(err)
		}
		if after-before < 4<<20 {
			t.Errorf("registry served %d bytes to run the first image again: its spans were not evicted", after-before)
		}
	})

	t.Run("removing an image frees its cache and zTOC", func(t *testing.T) {
		if !layerCached(e, a.big) || !ztocStored(e, a.ztoc) {
			t.Fatalf("layer %s not cached or its zTOC not stored before removal", a.big)
		}
		removeImage(t, ctx, e, a.ref, func() (bool, string) {
			switch {
			case layerCached(e, a.big):
				return false, "spans of layer " + a.big.String() + " still cached"
			case ztocStored(e, a.ztoc):
				return false, "zTOC " + a.ztoc.String() + " still stored"
			}
			return true, ""
		})
		if !ztocStored(e, b.ztoc) || !ztocStored(e, b.probe) {
			t.Errorf("zTOCs of the image still present were deleted")
		}
		removeImage(t, ctx, e, b.ref, func() (bool, string) {
			switch n := cacheBytes(t, e); {
			case n != 0:
				return false, fmt.Sprintf("span cache still holds %d bytes", n)
			case ztocStored(e, b.ztoc) || ztocStored(e, b.probe):
				return false, "zTOCs of the removed image still stored"
			}
			if files := indexStoreFiles(t, e); len(files) != 0 {
				return false, fmt.Sprintf("index store still holds %v", files)
			}
			return true, ""
		})
	})
}

// indexStoreFiles lists the files under the daemon's SOCI index store:
// indices, zTOCs (also prefetched ones) and the records choosing an index
// per image, which go with the last image using them.
func indexStoreFiles(t *testing.T, e *harness.Env) []string {
	t.Helper()
	var files []string
	root := filepath.Join(e.Daemon.Root, "fs", "index")
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, strings.TrimPrefix(p, root))
		}
		return err
	})
	if err != nil {
		t.Fatalf("walk the index store: %v", err)
	}
	return files
}
