package fs

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/fs/remote"
	"github.com/fastsoci/soci-snapshotter/fs/source"
)

// The snapshotter finds Release through its optional Releaser interface.
var _ interface {
	Release(ctx context.Context, mountpoint string) error
} = (*FS)(nil)

func newTestFS(t *testing.T) *FS {
	t.Helper()
	f, err := New(Options{Root: t.TempDir(), Registry: remote.New(remote.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// fakeLayer caches a span of a layer and stores a zTOC for it, as a mount
// would, and returns the layerRef release looks at.
func fakeLayer(t *testing.T, f *FS, name string) layerRef {
	t.Helper()
	return fakeZTOC(t, f, digest.FromString("layer "+name), "ztoc "+name)
}

// fakeZTOC is fakeLayer for a given layer digest and zTOC (named by its
// content).
func fakeZTOC(t *testing.T, f *FS, l digest.Digest, ztoc string) layerRef {
	t.Helper()
	z := digest.FromString(ztoc)
	if err := f.cache.Put(cacheKey(l.String(), z)+"/0-5", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(f.opts.Root, "index", "blobs", string(z.Algorithm()), z.Encoded())
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("ztoc"), 0o600); err != nil {
		t.Fatal(err)
	}
	return layerRef{name: l.String(), ztoc: z}
}

func kept(t *testing.T, f *FS, m layerRef) bool {
	t.Helper()
	_, cerr := f.cache.Get(cacheKey(m.name, m.ztoc) + "/0-5")
	_, zerr := os.Stat(filepath.Join(f.opts.Root, "index", "blobs", string(m.ztoc.Algorithm()), m.ztoc.Encoded()))
	if (cerr == nil) != (zerr == nil) {
		t.Fatalf("layer %s: cache error %v but zTOC error %v", m.name, cerr, zerr)
	}
	return cerr == nil
}

func TestReleaseFreesUnusedLayersOnly(t *testing.T) {
	f := newTestFS(t)
	one, two := fakeLayer(t, f, "one"), fakeLayer(t, f, "two")
	f.mounted["/mnt/two"] = &mountedLayer{name: two.name, ztoc: two.ztoc}
	t.Cleanup(func() { delete(f.mounted, "/mnt/two") }) // nothing to close

	// Another snapshot still has the same layer mounted.
	f.mounted["/mnt/one-again"] = &mountedLayer{name: one.name, ztoc: one.ztoc}
	f.release(t.Context(), one)
	if !kept(t, f, one) {
		t.Fatal("released a layer another mount uses")
	}
	delete(f.mounted, "/mnt/one-again")

	// Another snapshot of the layer was unmounted but stays.
	f.unmounted["/mnt/one-stays"] = layerRef{name: "sha256:other", ztoc: one.ztoc}
	f.release(t.Context(), one)
	if !kept(t, f, one) {
		t.Fatal("released a zTOC an unmounted snapshot that stays uses")
	}
	delete(f.unmounted, "/mnt/one-stays")

	// The layer is being mounted again.
	end := f.begin(source.Target{LayerDigest: digest.Digest(one.name)})
	f.release(t.Context(), one)
	if !kept(t, f, one) {
		t.Fatal("released a layer being mounted")
	}
	end()

	f.release(t.Context(), one)
	if kept(t, f, one) {
		t.Fatal("layer used by no mount kept")
	}
	if !kept(t, f, two) {
		t.Fatal("another layer's cache or zTOC deleted")
	}
	if len(f.pending) != 0 {
		t.Fatalf("pending mounts left: %v", f.pending)
	}
}

// TestReleaseOnlyWhenTold: an unmounted layer keeps its data until Release
// names its mountpoint.
func TestReleaseOnlyWhenTold(t *testing.T) {
	f := newTestFS(t)
	removed, stays := fakeLayer(t, f, "removed"), fakeLayer(t, f, "stays")
	// As Unmount leaves them.
	f.unmounted["/snap/1/fs"] = removed
	f.unmounted["/snap/2/fs"] = stays

	if err := f.Release(t.Context(), "/snap/3/fs"); err != nil {
		t.Fatalf("Release of a mountpoint never served: %v", err)
	}
	if !kept(t, f, removed) || !kept(t, f, stays) {
		t.Fatal("released data of another mountpoint")
	}
	if err := f.Release(t.Context(), "/snap/1/fs"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if kept(t, f, removed) {
		t.Fatal("released layer kept")
	}
	if !kept(t, f, stays) {
		t.Fatal("layer of an unmounted snapshot that stays released")
	}
	if _, ok := f.unmounted["/snap/1/fs"]; ok {
		t.Fatal("released mountpoint still recorded")
	}
	// A second Release is nothing to do.
	if err := f.Release(t.Context(), "/snap/1/fs"); err != nil {
		t.Fatalf("second Release: %v", err)
	}
}

// TestReleaseKeepsOtherZTOCsOfLayer: two images share a layer with
// different zTOCs; removing one frees its zTOC and spans only, and the
// last one frees the layer's whole cache (spans of an older key layout too).
func TestReleaseKeepsOtherZTOCsOfLayer(t *testing.T) {
	f := newTestFS(t)
	l := digest.FromString("shared layer")
	honest, altered := fakeZTOC(t, f, l, "honest ztoc"), fakeZTOC(t, f, l, "altered ztoc")
	if err := f.cache.Put(l.String()+"/legacy/0-5", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	f.mounted["/mnt/honest"] = &mountedLayer{name: honest.name, ztoc: honest.ztoc}
	f.release(t.Context(), altered)
	if kept(t, f, altered) {
		t.Fatal("spans and zTOC of a removed image's zTOC kept")
	}
	if !kept(t, f, honest) {
		t.Fatal("removing another zTOC of the layer deleted the mounted one's spans")
	}
	delete(f.mounted, "/mnt/honest")
	f.release(t.Context(), honest)
	if kept(t, f, honest) {
		t.Fatal("layer used by no mount kept")
	}
	if _, err := f.cache.Get(l.String() + "/legacy/0-5"); err == nil {
		t.Fatal("other spans of a layer used by no mount kept")
	}
}

// TestSpanCacheKeyBindsZTOC: the span manager of a layer caches under the
// layer and zTOC digests, so two zTOCs of one layer get disjoint keys under
// the layer's prefix (which Pin and Remove use).
func TestSpanCacheKeyBindsZTOC(t *testing.T) {
	f, err := New(Options{Root: t.TempDir(), Registry: remote.New(remote.Options{}), MaxDecompressBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	tg := source.Target{LayerDigest: digest.FromString("layer")}
	l := &index.Layer{}
	a := f.spanOptions(tg, l, digest.FromString("ztoc a"), nil).CacheKey
	b := f.spanOptions(tg, l, digest.FromString("ztoc b"), nil).CacheKey
	if a == b || strings.HasPrefix(a, b) || strings.HasPrefix(b, a) {
		t.Fatalf("cache keys %q and %q overlap", a, b)
	}
	for _, k := range []string{a, b} {
		if !strings.HasPrefix(k, tg.LayerDigest.String()+"/") {
			t.Fatalf("cache key %q not under the layer's digest", k)
		}
	}
	if lim := f.spanOptions(tg, l, digest.FromString("ztoc a"), nil).Limit; lim == nil || lim != f.decompress || lim.Max() != 1<<20 {
		t.Fatal("span manager does not share the FS's decompression limit")
	}
}

// fakeIndex stores a SOCI index over zTOCs (each of a layer of its own) and
// a record choosing it for an image manifest, as Find leaves them, and
// returns the index digest and the manifest.
func fakeIndex(t *testing.T, f *FS, ztocs ...digest.Digest) (idx, manifest digest.Digest) {
	t.Helper()
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: soci.SociIndexArtifactTypeV2, Digest: digest.FromString("{}"), Size: 2},
	}
	for _, z := range ztocs {
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: soci.SociLayerMediaType, Digest: z, Size: 4,
			Annotations: map[string]string{soci.IndexAnnotationImageLayerDigest: digest.FromString("layer of " + z.String()).String()}})
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	idx, manifest = digest.FromBytes(data), digest.FromString("manifest of "+string(data))
	writeFile(t, f.indexPath("blobs", idx), data)
	writeFile(t, f.indexPath("manifests", manifest), []byte(`{"index":"`+idx.String()+`","mode":"v2"}`))
	return idx, manifest
}

func (f *FS) indexPath(dir string, d digest.Digest) string {
	return filepath.Join(f.opts.Root, "index", dir, string(d.Algorithm()), d.Encoded())
}

func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestReleaseFreesIndex: once the last layer found in a SOCI index is
// released, the index blob, the record choosing it, and the zTOCs it lists
// that no live layer uses (prefetched ones) are deleted; not before, and
// not while a Mount for the same image is in progress.
func TestReleaseFreesIndex(t *testing.T) {
	f := newTestFS(t)
	one, two, shared := fakeLayer(t, f, "one"), fakeLayer(t, f, "two"), fakeLayer(t, f, "shared")
	prefetched := digest.FromString("ztoc prefetched")
	writeFile(t, f.indexPath("blobs", prefetched), []byte("ztoc"))
	idx, manifest := fakeIndex(t, f, one.ztoc, two.ztoc, shared.ztoc, prefetched)
	one.index, one.manifest = idx, manifest
	two.index, two.manifest = idx, manifest
	// shared's zTOC is also used by a layer of another image, still mounted.
	f.mounted["/mnt/other"] = &mountedLayer{name: shared.name, ztoc: shared.ztoc, index: digest.FromString("other index")}
	t.Cleanup(func() { delete(f.mounted, "/mnt/other") })
	f.unmounted["/mnt/two"] = two

	f.release(t.Context(), one)
	if !exists(f.indexPath("blobs", idx)) || !exists(f.indexPath("manifests", manifest)) {
		t.Fatal("index released while another of its layers stays")
	}
	delete(f.unmounted, "/mnt/two")

	end := f.begin(source.Target{LayerDigest: digest.FromString("layer three"), ManifestDigest: manifest})
	f.release(t.Context(), two)
	if !exists(f.indexPath("blobs", idx)) {
		t.Fatal("index released while a Mount for its image is in progress")
	}
	end()

	f.release(t.Context(), two)
	for name, p := range map[string]string{
		"index": f.indexPath("blobs", idx), "choice record": f.indexPath("manifests", manifest),
		"prefetched zTOC": f.indexPath("blobs", prefetched), "zTOC": f.indexPath("blobs", two.ztoc),
	} {
		if exists(p) {
			t.Errorf("%s kept after the last layer of the index was released", name)
		}
	}
	if !exists(f.indexPath("blobs", shared.ztoc)) {
		t.Error("deleted a zTOC a layer of another image uses")
	}
}
