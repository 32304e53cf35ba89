package sociimage

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/integration/image"
)

// AnnotatedManifest re-writes img's manifest for a v2 SOCI-enabled image, as
// the reference's convert does: OCI media types for the manifest and its
// config, plus AnnotationIndexDigest naming the SOCI index. The annotation
// changes the manifest digest. desc is the manifest's entry in the image
// index: OCI manifest media type, the manifest's annotations and the image
// config's normalized platform.
func AnnotatedManifest(img *image.Image, sociIndex ocispec.Descriptor) (data []byte, desc ocispec.Descriptor, err error) {
	m := img.Manifest
	m.MediaType = ocispec.MediaTypeImageManifest
	m.Config.MediaType = ocispec.MediaTypeImageConfig
	m.Annotations = maps.Clone(m.Annotations)
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Annotations[AnnotationIndexDigest] = sociIndex.Digest.String()
	if data, err = json.Marshal(m); err != nil {
		return nil, ocispec.Descriptor{}, fmt.Errorf("encode annotated manifest of %s: %w", img.ManifestDesc.Digest, err)
	}
	platform := platforms.Normalize(img.Config.Platform)
	desc = ocispec.Descriptor{
		MediaType:   ocispec.MediaTypeImageManifest,
		Digest:      digest.FromBytes(data),
		Size:        int64(len(data)),
		Annotations: maps.Clone(m.Annotations),
		Platform:    &platform,
	}
	return data, desc, nil
}

// V2ImageIndex builds the OCI image index of a single-platform SOCI-enabled
// image: the annotated manifest (desc from AnnotatedManifest), then the SOCI
// index with artifact type ArtifactTypeV2, AnnotationImageManifestDigest
// naming the annotated manifest, and the same platform.
func V2ImageIndex(manifest, sociIndex ocispec.Descriptor) (data []byte, desc ocispec.Descriptor, err error) {
	entry := ocispec.Descriptor{
		MediaType:    ocispec.MediaTypeImageManifest,
		Digest:       sociIndex.Digest,
		Size:         sociIndex.Size,
		Annotations:  map[string]string{AnnotationImageManifestDigest: manifest.Digest.String()},
		Platform:     manifest.Platform,
		ArtifactType: ArtifactTypeV2,
	}
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manifest, entry},
	}
	if data, err = json.Marshal(index); err != nil {
		return nil, ocispec.Descriptor{}, fmt.Errorf("encode SOCI-enabled image index: %w", err)
	}
	desc = ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageIndex,
		Digest:    digest.FromBytes(data),
		Size:      int64(len(data)),
	}
	return data, desc, nil
}

// PushV2 converts img into a v2 SOCI-enabled image and pushes it as ref:
// layers and config, zTOCs, the SOCI index (config blob and manifest), the
// annotated image manifest, and the image index tagged ref. The original
// manifest is not pushed. It returns the annotated manifest's descriptor (as
// listed in the image index) and the SOCI index.
func PushV2(ctx context.Context, ref string, img *image.Image, opts Options) (ocispec.Descriptor, *Index, error) {
	idx, err := BuildIndex(img, 2, opts)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	desc, err := PushV2Built(ctx, ref, img, idx, nil)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	return desc, idx, nil
}
