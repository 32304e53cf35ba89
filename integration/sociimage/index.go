// Package sociimage turns test images (built by integration/image) into
// SOCI-enabled images the way the reference tooling does: it builds a zTOC
// per layer and the SOCI index manifest listing them (`soci create`), and
// pushes either a v2 SOCI-enabled image (`soci convert` then push) or a v1
// index found through the OCI referrers fallback tag (`soci push`). It is not
// part of the snapshotter's flow: it produces what the flow's discovery step
// (fs/index) later finds, fetches and checks.
package sociimage

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/integration/image"
)

// Format facts, as the reference (soci-snapshotter v0.16.1, soci/soci_index.go
// and soci/soci_convert.go) writes them.
const (
	// ArtifactTypeV1 is the artifact type of a v1 SOCI index (it has a
	// subject and is found through the referrers API). It is the index
	// manifest's config media type and the artifactType of descriptors
	// pointing at the index; the index manifest itself has no artifactType.
	ArtifactTypeV1 = "application/vnd.amazon.soci.index.v1+json"
	// ArtifactTypeV2 is the same for a v2 SOCI index (no subject; the image
	// manifest names it in AnnotationIndexDigest).
	ArtifactTypeV2 = "application/vnd.amazon.soci.index.v2+json"
	// ZTOCMediaType is the media type of zTOC descriptors in an index.
	ZTOCMediaType = "application/octet-stream"

	// AnnotationLayerDigest, AnnotationLayerMediaType, AnnotationSpanSize and
	// AnnotationDisableXattrs are set on each zTOC descriptor.
	AnnotationLayerDigest    = "com.amazon.soci.image-layer-digest"
	AnnotationLayerMediaType = "com.amazon.soci.image-layer-mediaType"
	AnnotationSpanSize       = "com.amazon.soci.span-size"
	AnnotationDisableXattrs  = "com.amazon.soci.disable-xattrs"
	// AnnotationBuildTool is the index manifest's only annotation.
	AnnotationBuildTool = "com.amazon.soci.build-tool-identifier"
	// AnnotationIndexDigest is set on a v2 image manifest (and on its
	// descriptor in the image index) to the SOCI index manifest's digest.
	AnnotationIndexDigest = "com.amazon.soci.index-digest"
	// AnnotationImageManifestDigest is set on the SOCI index's descriptor in
	// a v2 image index to the annotated image manifest's digest.
	AnnotationImageManifestDigest = "com.amazon.soci.image-manifest-digest"

	// DefaultBuildTool is the reference CLI's build tool identifier, written
	// both in the index annotation and inside every zTOC.
	DefaultBuildTool = "AWS SOCI CLI v0.2"
	// DefaultSpanSize is the reference's default span size (4 MiB).
	DefaultSpanSize = int64(4 << 20)
	// ConfigContent is the content of every SOCI index's config blob.
	ConfigContent = "{}"
)

// ErrEmptyIndex is returned when no layer got a zTOC.
var ErrEmptyIndex = errors.New("no zTOC built: every layer was skipped")

// Options control which layers get a zTOC and how it is built.
type Options struct {
	// SpanSize is the uncompressed size of a span; 0 means DefaultSpanSize.
	SpanSize int64
	// MinLayerSize leaves layers whose (compressed) size is smaller without a
	// zTOC. The reference CLI defaults to 10 MiB; here 0 indexes every layer.
	MinLayerSize int64
	// SkipLayers are layer indexes to leave without a zTOC (sparse indices).
	SkipLayers []int
	// DisableXattrs sets AnnotationDisableXattrs to "true" on the zTOC of
	// each layer without xattrs and opaque directories, as the reference's
	// `--optimizations xattr` does.
	DisableXattrs bool
	// BuildTool is the build tool identifier; "" means DefaultBuildTool.
	BuildTool string
}

// Index is a built SOCI index with its zTOCs.
type Index struct {
	// Manifest is the SOCI index manifest.
	Manifest ocispec.Manifest
	// Bytes is exactly Go's compact encoding/json of Manifest.
	Bytes []byte
	// Desc describes Bytes: media type, artifact type, digest and size (no
	// annotations or platform; see V2ImageIndex and ReferrerDescriptor).
	Desc ocispec.Descriptor
	// ZTOCs holds each zTOC's bytes by zTOC digest.
	ZTOCs map[digest.Digest][]byte
	// ZTOCByLayer maps an indexed layer's digest to its zTOC's digest.
	ZTOCByLayer map[digest.Digest]digest.Digest
}

// ConfigDesc returns the descriptor of the index's config blob, whose content
// is always ConfigContent.
func (x *Index) ConfigDesc() ocispec.Descriptor { return x.Manifest.Config }

// BuildIndex builds the zTOCs of img's layers and the SOCI index listing them
// in layer order: version 1 has img's manifest as subject, version 2 has no
// subject. The same image and options always give the same bytes.
func BuildIndex(img *image.Image, version int, opts Options) (*Index, error) {
	artifactType, err := artifactTypeOf(version)
	if err != nil {
		return nil, err
	}
	opts = withDefaults(opts)
	idx := &Index{
		ZTOCs:       map[digest.Digest][]byte{},
		ZTOCByLayer: map[digest.Digest]digest.Digest{},
	}
	layers := []ocispec.Descriptor{}
	for i, layer := range img.LayerDescs {
		if slices.Contains(opts.SkipLayers, i) || layer.Size < opts.MinLayerSize {
			continue
		}
		z, err := buildZTOC(layer, img.Layers[i], opts)
		if err != nil {
			return nil, fmt.Errorf("build zTOC of layer %d (%s): %w", i, layer.Digest, err)
		}
		if z == nil {
			continue // compression the zTOC builder cannot index, e.g. zstd
		}
		layers = append(layers, z.desc)
		idx.ZTOCs[z.desc.Digest] = z.data
		idx.ZTOCByLayer[layer.Digest] = z.desc.Digest
	}
	if len(layers) == 0 {
		return nil, ErrEmptyIndex
	}

	idx.Manifest = ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{
			MediaType: artifactType,
			Digest:    digest.FromString(ConfigContent),
			Size:      int64(len(ConfigContent)),
		},
		Layers:      layers,
		Annotations: map[string]string{AnnotationBuildTool: opts.BuildTool},
	}
	if version == 1 {
		idx.Manifest.Subject = &ocispec.Descriptor{
			MediaType: img.ManifestDesc.MediaType,
			Digest:    img.ManifestDesc.Digest,
			Size:      img.ManifestDesc.Size,
		}
	}
	if idx.Bytes, err = json.Marshal(idx.Manifest); err != nil {
		return nil, fmt.Errorf("encode SOCI index of %s: %w", img.ManifestDesc.Digest, err)
	}
	idx.Desc = ocispec.Descriptor{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: artifactType,
		Digest:       digest.FromBytes(idx.Bytes),
		Size:         int64(len(idx.Bytes)),
	}
	return idx, nil
}

func artifactTypeOf(version int) (string, error) {
	switch version {
	case 1:
		return ArtifactTypeV1, nil
	case 2:
		return ArtifactTypeV2, nil
	}
	return "", fmt.Errorf("SOCI index version %d: only 1 and 2 exist", version)
}

func withDefaults(opts Options) Options {
	if opts.SpanSize == 0 {
		opts.SpanSize = DefaultSpanSize
	}
	if opts.BuildTool == "" {
		opts.BuildTool = DefaultBuildTool
	}
	return opts
}
