package sociimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/integration/image"
)

const testSpan = 64 << 10

func testSpec() image.Spec {
	return image.Spec{
		Layers: []image.Layer{
			{Entries: []image.Entry{
				image.Dir("etc"),
				image.File("etc/config", []byte("hello\n")),
				{Name: "etc/tool", Type: tar.TypeReg, Mode: 0o755, Size: 300 << 10, Seed: 1,
					Xattrs: map[string]string{"user.a": "1"}},
			}},
			{Entries: []image.Entry{
				image.Dir("data"),
				image.RandomFile("data/skipped", 10<<10, 2),
			}},
			{Uncompressed: true, Entries: []image.Entry{
				image.Dir("big"),
				image.RandomFile("big/blob", 200<<10, 3),
				image.Symlink("big/link", "blob"),
			}},
		},
		Cmd: []string{"/bin/true"},
	}
}

func buildImage(t *testing.T, spec image.Spec) *image.Image {
	t.Helper()
	img, err := image.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestBuildIndexV1(t *testing.T) {
	img := buildImage(t, testSpec())
	idx, err := BuildIndex(img, 1, Options{SpanSize: testSpan, SkipLayers: []int{1}, DisableXattrs: true})
	if err != nil {
		t.Fatal(err)
	}
	m := idx.Manifest
	if m.SchemaVersion != 2 || m.MediaType != ocispec.MediaTypeImageManifest || m.ArtifactType != "" {
		t.Errorf("manifest header: schemaVersion %d, mediaType %q, artifactType %q", m.SchemaVersion, m.MediaType, m.ArtifactType)
	}
	wantConfig := ocispec.Descriptor{
		MediaType: "application/vnd.amazon.soci.index.v1+json",
		Digest:    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
		Size:      2,
	}
	if !equalJSON(t, m.Config, wantConfig) || idx.ConfigDesc().Digest != digest.FromString(ConfigContent) {
		t.Errorf("config = %+v, want %+v", m.Config, wantConfig)
	}
	wantSubject := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: img.ManifestDesc.Digest, Size: img.ManifestDesc.Size}
	if m.Subject == nil || !equalJSON(t, *m.Subject, wantSubject) {
		t.Errorf("subject = %+v, want %+v", m.Subject, wantSubject)
	}
	if want := map[string]string{"com.amazon.soci.build-tool-identifier": "AWS SOCI CLI v0.2"}; !maps.Equal(m.Annotations, want) {
		t.Errorf("annotations = %v, want %v", m.Annotations, want)
	}

	// Layers 0 and 2, in layer order; layer 0 has an xattr, layer 2 none.
	if len(m.Layers) != 2 {
		t.Fatalf("%d zTOCs, want 2", len(m.Layers))
	}
	for i, li := range []int{0, 2} {
		layer := img.LayerDescs[li]
		z := m.Layers[i]
		want := map[string]string{
			"com.amazon.soci.image-layer-digest":    layer.Digest.String(),
			"com.amazon.soci.image-layer-mediaType": layer.MediaType,
			"com.amazon.soci.span-size":             strconv.Itoa(testSpan),
		}
		if li == 2 {
			want["com.amazon.soci.disable-xattrs"] = "true"
		}
		if z.MediaType != "application/octet-stream" || !maps.Equal(z.Annotations, want) {
			t.Errorf("zTOC %d: media type %q, annotations %v, want %v", i, z.MediaType, z.Annotations, want)
		}
		if z.Platform != nil || z.ArtifactType != "" || z.Data != nil || z.URLs != nil {
			t.Errorf("zTOC %d has extra fields: %+v", i, z)
		}
		if idx.ZTOCByLayer[layer.Digest] != z.Digest {
			t.Errorf("ZTOCByLayer[%s] = %s, want %s", layer.Digest, idx.ZTOCByLayer[layer.Digest], z.Digest)
		}
		data := idx.ZTOCs[z.Digest]
		if digest.FromBytes(data) != z.Digest || int64(len(data)) != z.Size {
			t.Errorf("zTOC %d bytes do not match their descriptor", i)
		}
	}
	if len(idx.ZTOCs) != 2 || len(idx.ZTOCByLayer) != 2 {
		t.Errorf("%d zTOCs, %d layers mapped, want 2 and 2", len(idx.ZTOCs), len(idx.ZTOCByLayer))
	}

	encoded, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(idx.Bytes, encoded) {
		t.Errorf("Bytes is not json.Marshal(Manifest):\n%s\n%s", idx.Bytes, encoded)
	}
	wantDesc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest, ArtifactType: "application/vnd.amazon.soci.index.v1+json",
		Digest: digest.FromBytes(idx.Bytes), Size: int64(len(idx.Bytes)),
	}
	if !equalJSON(t, idx.Desc, wantDesc) {
		t.Errorf("Desc = %+v, want %+v", idx.Desc, wantDesc)
	}
	checkAgainstReference(t, idx, soci.V1)
}

func TestBuildIndexV2(t *testing.T) {
	img := buildImage(t, testSpec())
	idx, err := BuildIndex(img, 2, Options{SpanSize: testSpan})
	if err != nil {
		t.Fatal(err)
	}
	m := idx.Manifest
	if m.Subject != nil || m.ArtifactType != "" {
		t.Errorf("v2 index has subject %v, artifactType %q", m.Subject, m.ArtifactType)
	}
	if m.Config.MediaType != "application/vnd.amazon.soci.index.v2+json" || idx.Desc.ArtifactType != m.Config.MediaType {
		t.Errorf("config media type %q, descriptor artifact type %q", m.Config.MediaType, idx.Desc.ArtifactType)
	}
	if len(m.Layers) != 3 {
		t.Fatalf("%d zTOCs, want 3", len(m.Layers))
	}
	for i, z := range m.Layers {
		if z.Annotations[AnnotationLayerDigest] != img.LayerDescs[i].Digest.String() {
			t.Errorf("zTOC %d is for layer %s", i, z.Annotations[AnnotationLayerDigest])
		}
		if _, ok := z.Annotations[AnnotationDisableXattrs]; ok {
			t.Errorf("zTOC %d has %s without Options.DisableXattrs", i, AnnotationDisableXattrs)
		}
	}
	checkAgainstReference(t, idx, soci.V2)
}

// checkAgainstReference encodes the same index with the reference's own
// code, and re-encodes Bytes the way the reference daemon does after a fetch.
func checkAgainstReference(t *testing.T, idx *Index, version soci.IndexVersion) {
	t.Helper()
	ref, err := soci.MarshalIndex(soci.NewIndex(version, idx.Manifest.Layers, idx.Manifest.Subject, idx.Manifest.Annotations))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ref, idx.Bytes) {
		t.Errorf("reference encodes the index as\n%s\nwe wrote\n%s", ref, idx.Bytes)
	}
	var decoded soci.Index
	if err := soci.UnmarshalIndex(idx.Bytes, &decoded); err != nil {
		t.Fatal(err)
	}
	again, err := soci.MarshalIndex(&decoded)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, idx.Bytes) {
		t.Errorf("reference re-encodes the index as\n%s", again)
	}
	if decoded.ArtifactType != idx.Desc.ArtifactType {
		t.Errorf("reference reads artifact type %q, want %q", decoded.ArtifactType, idx.Desc.ArtifactType)
	}
}

func TestZTOCsListLayerFiles(t *testing.T) {
	spec := testSpec()
	img := buildImage(t, spec)
	idx, err := BuildIndex(img, 2, Options{SpanSize: testSpan})
	if err != nil {
		t.Fatal(err)
	}
	wantAlgorithm := []string{compression.Gzip, compression.Gzip, compression.Uncompressed}
	for i, z := range idx.Manifest.Layers {
		toc, err := ztoc.Unmarshal(bytes.NewReader(idx.ZTOCs[z.Digest]))
		if err != nil {
			t.Fatalf("zTOC %d: %v", i, err)
		}
		var names, want []string
		for _, md := range toc.TOC.FileMetadata {
			names = append(names, strings.TrimSuffix(md.Name, "/")) // directories end in "/" in the tar
		}
		for _, e := range spec.Layers[i].Entries {
			want = append(want, e.Name)
		}
		if !slices.Equal(names, want) {
			t.Errorf("zTOC %d lists %q, want %q", i, names, want)
		}
		if toc.Version != ztoc.Version09 || toc.BuildToolIdentifier != DefaultBuildTool {
			t.Errorf("zTOC %d: version %q, build tool %q", i, toc.Version, toc.BuildToolIdentifier)
		}
		if toc.CompressionAlgorithm != wantAlgorithm[i] {
			t.Errorf("zTOC %d: compression %q, want %q", i, toc.CompressionAlgorithm, wantAlgorithm[i])
		}
		if toc.CompressedArchiveSize != compression.Offset(img.LayerDescs[i].Size) {
			t.Errorf("zTOC %d: compressed size %d, layer %d", i, toc.CompressedArchiveSize, img.LayerDescs[i].Size)
		}
	}
	// Layer 0 holds about 300 KiB of random data: several 64 KiB spans.
	toc, err := ztoc.Unmarshal(bytes.NewReader(idx.ZTOCs[idx.Manifest.Layers[0].Digest]))
	if err != nil {
		t.Fatal(err)
	}
	if toc.MaxSpanID < 3 || len(toc.SpanDigests) != int(toc.MaxSpanID)+1 {
		t.Errorf("layer 0: max span id %d, %d span digests", toc.MaxSpanID, len(toc.SpanDigests))
	}
	if got := toc.TOC.FileMetadata[2].Xattrs(); got["user.a"] != "1" {
		t.Errorf("etc/tool xattrs = %v", got)
	}
}

func TestBuildIndexIsDeterministic(t *testing.T) {
	opts := Options{SpanSize: testSpan, SkipLayers: []int{1}, DisableXattrs: true}
	a, err := BuildIndex(buildImage(t, testSpec()), 1, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := BuildIndex(buildImage(t, testSpec()), 1, opts)
	if err != nil {
		t.Fatal(err)
	}
	if a.Desc.Digest != b.Desc.Digest || !bytes.Equal(a.Bytes, b.Bytes) {
		t.Errorf("index digests differ: %s, %s", a.Desc.Digest, b.Desc.Digest)
	}
	if !maps.Equal(a.ZTOCByLayer, b.ZTOCByLayer) {
		t.Errorf("zTOC digests differ: %v, %v", a.ZTOCByLayer, b.ZTOCByLayer)
	}
	opts.SpanSize *= 2
	c, err := BuildIndex(buildImage(t, testSpec()), 1, opts)
	if err != nil {
		t.Fatal(err)
	}
	if c.Desc.Digest == a.Desc.Digest {
		t.Error("another span size gave the same index")
	}
}

func TestBuildIndexSkips(t *testing.T) {
	img := buildImage(t, testSpec())
	idx, err := BuildIndex(img, 2, Options{MinLayerSize: img.LayerDescs[1].Size + 1})
	if err != nil {
		t.Fatal(err)
	}
	var indexed []digest.Digest
	for _, z := range idx.Manifest.Layers {
		indexed = append(indexed, digest.Digest(z.Annotations[AnnotationLayerDigest]))
		if z.Annotations[AnnotationSpanSize] != "4194304" {
			t.Errorf("default span size annotation %q", z.Annotations[AnnotationSpanSize])
		}
	}
	if want := []digest.Digest{img.LayerDescs[0].Digest, img.LayerDescs[2].Digest}; !slices.Equal(indexed, want) {
		t.Errorf("indexed %v, want %v (layer 1 is the smallest)", indexed, want)
	}

	if _, err := BuildIndex(img, 1, Options{SkipLayers: []int{0, 1, 2}}); !errors.Is(err, ErrEmptyIndex) {
		t.Errorf("all layers skipped: err = %v, want ErrEmptyIndex", err)
	}
	if _, err := BuildIndex(img, 3, Options{}); err == nil {
		t.Error("version 3 accepted")
	}
}

func TestDisableXattrsKeepsOpaqueDirs(t *testing.T) {
	img := buildImage(t, image.Spec{Layers: []image.Layer{
		{Entries: []image.Entry{image.Dir("a"), image.File("a/f", []byte("x"))}},
		{Entries: []image.Entry{image.Dir("a"), image.OpaqueDir("a")}},
	}})
	idx, err := BuildIndex(img, 2, Options{DisableXattrs: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := idx.Manifest.Layers[0].Annotations[AnnotationDisableXattrs]; got != "true" {
		t.Errorf("plain layer: disable-xattrs %q, want true", got)
	}
	if got, ok := idx.Manifest.Layers[1].Annotations[AnnotationDisableXattrs]; ok {
		t.Errorf("layer with an opaque directory: disable-xattrs %q, want none", got)
	}
}

func TestConstantsMatchReference(t *testing.T) {
	for _, c := range []struct{ ours, ref string }{
		{ArtifactTypeV1, soci.SociIndexArtifactTypeV1},
		{ArtifactTypeV2, soci.SociIndexArtifactTypeV2},
		{ZTOCMediaType, soci.SociLayerMediaType},
		{AnnotationLayerDigest, soci.IndexAnnotationImageLayerDigest},
		{AnnotationLayerMediaType, soci.IndexAnnotationImageLayerMediaType},
		{AnnotationSpanSize, soci.IndexAnnotationSociSpanSize},
		{AnnotationDisableXattrs, soci.IndexAnnotationDisableXAttrs},
		{AnnotationBuildTool, soci.IndexAnnotationBuildToolIdentifier},
		{AnnotationIndexDigest, soci.ImageAnnotationSociIndexDigest},
		{AnnotationImageManifestDigest, soci.IndexAnnotationImageManifestDigest},
	} {
		if c.ours != c.ref {
			t.Errorf("%q, reference %q", c.ours, c.ref)
		}
	}
}

// equalJSON compares two values by their JSON encoding.
func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ja, jb)
}
