package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// testLayout writes an OCI layout with one single-layer image to dir: the
// layer holds app/big.bin (3 MiB of random bytes) and app/small.txt.
// It returns the manifest's descriptor.
func testLayout(t *testing.T, dir string) ocispec.Descriptor {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	big := make([]byte, 3<<20)
	rand.New(rand.NewSource(1)).Read(big)
	for _, f := range []struct {
		name string
		data []byte
	}{{"app/small.txt", []byte("hello\n")}, {"app/big.bin", big}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(f.data)
	}
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw.Bytes())
	zw.Close()
	put := func(data []byte) digest.Digest {
		d := digest.FromBytes(data)
		p := blobPath(dir, d)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	layer := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: put(gz.Bytes()), Size: int64(gz.Len())}
	cfg, _ := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(raw.Bytes())}},
	})
	m, _ := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: put(cfg), Size: int64(len(cfg))},
		Layers: []ocispec.Descriptor{layer},
	})
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: put(m), Size: int64(len(m)),
		Platform: &ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}}
	idx, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{desc}})
	os.WriteFile(filepath.Join(dir, ocispec.ImageIndexFile), idx, 0o644)
	os.WriteFile(filepath.Join(dir, ocispec.ImageLayoutFile), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	return desc
}

func TestLayoutFile(t *testing.T) {
	hex := strings.Repeat("a", 64)
	for name, want := range map[string]string{
		"index.json":                 "index.json",
		"./oci-layout":               "oci-layout",
		"blobs/sha256/" + hex:        "blobs/sha256/" + hex,
		"../../blobs/sha256/" + hex:  "blobs/sha256/" + hex, // cleaned under the root, never above it
		"blobs/sha256/../../etc/x":   "",
		"blobs/sha256/abc":           "",
		"blobs/md5/" + hex:           "",
		"manifest.json":              "",
		"blobs/sha256/" + hex + "/x": "",
	} {
		got, ok := layoutFile(name)
		if ok != (want != "") || got != want {
			t.Errorf("layoutFile(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
}

func TestExtractLayoutSkipsOtherEntries(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "../evil", Typeflag: tar.TypeReg, Size: 1},
		{Name: "index.json", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"},
		{Name: "oci-layout", Typeflag: tar.TypeReg, Size: 1},
	} {
		tw.WriteHeader(h)
		if h.Size > 0 {
			tw.Write([]byte("x"))
		}
	}
	tw.Close()
	dst := t.TempDir()
	if err := extractLayout(&buf, dst); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dst)
	if len(ents) != 1 || ents[0].Name() != "oci-layout" {
		t.Errorf("extracted %v, want only oci-layout", ents)
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(dst), "evil")); err == nil {
		t.Error("an entry was written outside the destination")
	}
}

func TestLayoutRoot(t *testing.T) {
	dir := t.TempDir()
	m := testLayout(t, dir)
	got, err := layoutRoot(dir)
	if err != nil || got.Digest != m.Digest {
		t.Fatalf("single manifest: got %v %v, want %s", got.Digest, err, m.Digest)
	}
	// A nested list naming the manifest and one absent manifest (a
	// multi-platform image saved for one platform) resolves to the manifest.
	absent := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("absent"), Size: 6}
	list, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{m, absent}})
	ld := digest.FromBytes(list)
	os.WriteFile(blobPath(dir, ld), list, 0o644)
	top, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2},
		Manifests: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageIndex, Digest: ld, Size: int64(len(list))}}})
	os.WriteFile(filepath.Join(dir, "index.json"), top, 0o644)
	if got, err = layoutRoot(dir); err != nil || got.Digest != m.Digest {
		t.Errorf("nested list with an absent platform: got %v %v, want %s", got.Digest, err, m.Digest)
	}
	// With every manifest absent it is an error.
	os.WriteFile(filepath.Join(dir, "index.json"), []byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"`+
		absent.Digest.String()+`","size":6},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"`+absent.Digest.String()+`","size":6}]}`), 0o644)
	if _, err := layoutRoot(dir); err == nil {
		t.Error("layout without any manifest blob: no error")
	}
	os.WriteFile(filepath.Join(dir, "index.json"), []byte(`{"manifests":[{"digest":"sha256:../../x"}]}`), 0o644)
	if _, err := layoutRoot(dir); err == nil {
		t.Error("invalid digest in index.json: no error")
	}
}

func TestClearOutputDirRefusesForeignDirectory(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "precious"), []byte("x"), 0o644)
	if err := clearOutputDir(dir); err == nil {
		t.Fatal("a non-layout directory would be removed")
	}
	if _, err := os.Stat(filepath.Join(dir, "precious")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, ocispec.ImageLayoutFile), []byte("{}"), 0o644)
	if err := clearOutputDir(dir); err != nil {
		t.Fatal(err)
	}
}

// TestConvertStandaloneInProcess converts a layout with no containerd
// (the address points nowhere) to a directory and checks the v2 shape:
// index.json -> image index with the annotated manifest and the SOCI
// index entry, whose layers are the zTOC and the prefetch artifact.
func TestConvertStandaloneInProcess(t *testing.T) {
	in := t.TempDir()
	m := testLayout(t, in)
	out := filepath.Join(t.TempDir(), "out")
	_, stderr, code := runSoci(t, "--address", "/nonexistent/containerd.sock", "convert", "--standalone", "--format", "oci-dir",
		"--min-layer-size", "0", "--span-size", "1048576", "--prefetch-file", "/app/big.bin", in, out)
	if code != 0 {
		t.Fatalf("convert --standalone: %s", stderr)
	}
	top, err := readIndex(filepath.Join(out, "index.json"))
	if err != nil || len(top.Manifests) != 1 || top.Manifests[0].MediaType != ocispec.MediaTypeImageIndex {
		t.Fatalf("index.json: %+v %v", top, err)
	}
	idx, err := readIndex(blobPath(out, top.Manifests[0].Digest))
	if err != nil || len(idx.Manifests) != 2 {
		t.Fatalf("converted image index: %+v %v", idx, err)
	}
	var sociDesc, annotated ocispec.Descriptor
	for _, d := range idx.Manifests {
		if d.ArtifactType == "application/vnd.amazon.soci.index.v2+json" {
			sociDesc = d
		} else if d.Annotations["com.amazon.soci.index-digest"] == "" {
			t.Errorf("image manifest entry lacks com.amazon.soci.index-digest: %+v", d)
		} else {
			annotated = d
		}
	}
	if sociDesc.Annotations["com.amazon.soci.image-manifest-digest"] != annotated.Digest.String() ||
		annotated.Annotations["com.amazon.soci.index-digest"] != sociDesc.Digest.String() {
		t.Errorf("SOCI index entry %+v and annotated manifest %+v don't name each other", sociDesc, annotated)
	}
	var converted ocispec.Manifest
	if data, err := os.ReadFile(blobPath(out, annotated.Digest)); err != nil || json.Unmarshal(data, &converted) != nil ||
		len(converted.Layers) != 1 || converted.Layers[0].Digest != layerOf(t, in, m) {
		t.Errorf("annotated manifest does not keep the original layer: %+v %v", converted, err)
	}
	data, err := os.ReadFile(blobPath(out, sociDesc.Digest))
	if err != nil || digest.FromBytes(data) != sociDesc.Digest {
		t.Fatalf("SOCI index blob: %v", err)
	}
	var sm ocispec.Manifest
	json.Unmarshal(data, &sm)
	var ztocs, prefetch int
	for _, l := range sm.Layers {
		if _, err := os.Stat(blobPath(out, l.Digest)); err != nil {
			t.Errorf("blob %s of the SOCI index is missing", l.Digest)
		}
		switch l.MediaType {
		case "application/octet-stream":
			ztocs++
		case "application/vnd.amazon.soci.prefetch.v1+json":
			prefetch++
		}
	}
	if ztocs != 1 || prefetch != 1 {
		t.Errorf("SOCI index has %d zTOCs and %d prefetch artifacts, want 1 and 1: %+v", ztocs, prefetch, sm.Layers)
	}

	// The same as an archive: a tar holding the same index.json target.
	tarOut := filepath.Join(t.TempDir(), "out.tar")
	_, stderr, code = runSoci(t, "--address", "/nonexistent/containerd.sock", "convert", "--standalone",
		"--min-layer-size", "0", "--span-size", "1048576", "--prefetch-file", "/app/big.bin", in, tarOut)
	if code != 0 {
		t.Fatalf("convert --standalone to archive: %s", stderr)
	}
	unpacked := t.TempDir()
	f, err := os.Open(tarOut)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := extractLayout(f, unpacked); err != nil {
		t.Fatal(err)
	}
	top2, err := readIndex(filepath.Join(unpacked, "index.json"))
	if err != nil || len(top2.Manifests) != 1 || top2.Manifests[0].Digest != top.Manifests[0].Digest {
		t.Errorf("archive's index.json %+v (%v), want the directory's target %s", top2, err, top.Manifests[0].Digest)
	}
	for _, l := range append(sm.Layers, sociDesc) {
		if _, err := os.Stat(blobPath(unpacked, l.Digest)); err != nil {
			t.Errorf("archive lacks blob %s", l.Digest)
		}
	}

	// A bad --format is refused.
	if _, stderr, code := runSoci(t, "convert", "--standalone", "--format", "docker", in, tarOut); code == 0 || !strings.Contains(stderr, "oci-archive") {
		t.Errorf("--format docker: code %d, %q", code, stderr)
	}
}

// layerOf is the digest of the first layer of manifest m in layout dir.
func layerOf(t *testing.T, dir string, m ocispec.Descriptor) digest.Digest {
	t.Helper()
	data, err := os.ReadFile(blobPath(dir, m.Digest))
	if err != nil {
		t.Fatal(err)
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(data, &man); err != nil || len(man.Layers) == 0 {
		t.Fatalf("manifest %s: %v", m.Digest, err)
	}
	return man.Layers[0].Digest
}
