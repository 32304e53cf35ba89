package sociimage

import (
	"encoding/json"
	"fmt"
	"maps"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestAnnotatedManifest(t *testing.T) {
	spec := testSpec()
	spec.Platform = ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	spec.Annotations = map[string]string{"org.example": "kept"}
	img := buildImage(t, spec)
	idx, err := BuildIndex(img, 2, Options{SpanSize: testSpan})
	if err != nil {
		t.Fatal(err)
	}
	data, desc, err := AnnotatedManifest(img, idx.Desc)
	if err != nil {
		t.Fatal(err)
	}
	wantAnnotations := map[string]string{"org.example": "kept", "com.amazon.soci.index-digest": idx.Desc.Digest.String()}
	var got ocispec.Manifest
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	want := img.Manifest
	want.Annotations = wantAnnotations
	if !equalJSON(t, got, want) {
		t.Errorf("annotated manifest\n%s\nwant the original plus the index digest", data)
	}
	if img.Manifest.Annotations["com.amazon.soci.index-digest"] != "" {
		t.Error("AnnotatedManifest changed img's manifest")
	}
	if desc.Digest != digest.FromBytes(data) || desc.Size != int64(len(data)) || desc.Digest == img.ManifestDesc.Digest {
		t.Errorf("descriptor %s/%d does not describe the new manifest", desc.Digest, desc.Size)
	}
	// The platform is the config's, normalized as containerd does (arm64/v8 -> arm64).
	wantPlatform := ocispec.Platform{OS: "linux", Architecture: "arm64"}
	if desc.MediaType != ocispec.MediaTypeImageManifest || !maps.Equal(desc.Annotations, wantAnnotations) ||
		desc.Platform == nil || !equalJSON(t, *desc.Platform, wantPlatform) || desc.ArtifactType != "" {
		t.Errorf("descriptor %+v (platform %+v)", desc, desc.Platform)
	}
}

func TestV2ImageIndex(t *testing.T) {
	spec := testSpec()
	spec.Platform = ocispec.Platform{OS: "linux", Architecture: "amd64"}
	img := buildImage(t, spec)
	idx, err := BuildIndex(img, 2, Options{SpanSize: testSpan})
	if err != nil {
		t.Fatal(err)
	}
	_, manifest, err := AnnotatedManifest(img, idx.Desc)
	if err != nil {
		t.Fatal(err)
	}
	data, desc, err := V2ImageIndex(manifest, idx.Desc)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`+
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%[1]s","size":%[2]d,`+
		`"annotations":{"com.amazon.soci.index-digest":"%[3]s"},"platform":{"architecture":"amd64","os":"linux"}},`+
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%[3]s","size":%[4]d,`+
		`"annotations":{"com.amazon.soci.image-manifest-digest":"%[1]s"},"platform":{"architecture":"amd64","os":"linux"},`+
		`"artifactType":"application/vnd.amazon.soci.index.v2+json"}]}`,
		manifest.Digest, manifest.Size, idx.Desc.Digest, idx.Desc.Size)
	if string(data) != want {
		t.Errorf("image index\n%s\nwant\n%s", data, want)
	}
	if desc.MediaType != ocispec.MediaTypeImageIndex || desc.Digest != digest.FromBytes(data) || desc.Size != int64(len(data)) {
		t.Errorf("descriptor %+v", desc)
	}
}
