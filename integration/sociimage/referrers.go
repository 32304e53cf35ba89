package sociimage

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/integration/image"
)

// FallbackTag is the OCI referrers tag schema's tag for subject d:
// "<algorithm>-<hex>", e.g. "sha256-0123...".
func FallbackTag(d digest.Digest) string {
	return d.Algorithm().String() + "-" + d.Encoded()
}

// ReferrerDescriptor is the SOCI index's entry in a referrers list, as oras
// (which the reference's push uses) writes it: media type, digest and size,
// the index manifest's annotations, and as artifact type the manifest's
// artifactType or, when empty as in SOCI indices, its config media type.
func ReferrerDescriptor(idx *Index) ocispec.Descriptor {
	artifactType := idx.Manifest.ArtifactType
	if artifactType == "" {
		artifactType = idx.Manifest.Config.MediaType
	}
	return ocispec.Descriptor{
		MediaType:    idx.Desc.MediaType,
		Digest:       idx.Desc.Digest,
		Size:         idx.Desc.Size,
		Annotations:  maps.Clone(idx.Manifest.Annotations),
		ArtifactType: artifactType,
	}
}

// FallbackIndex builds the image index for a referrers fallback tag: the
// referrers of existing (an encoded image index, or nil for none) followed by
// those of add it does not list yet. Like oras, entries are told apart by
// media type, digest and size, and empty or repeated old entries are dropped.
func FallbackIndex(existing []byte, add ...ocispec.Descriptor) ([]byte, error) {
	var old ocispec.Index
	if existing != nil {
		if err := json.Unmarshal(existing, &old); err != nil {
			return nil, fmt.Errorf("decode referrers index: %w", err)
		}
		if old.MediaType != "" && old.MediaType != ocispec.MediaTypeImageIndex {
			return nil, fmt.Errorf("referrers index has media type %q, want %q", old.MediaType, ocispec.MediaTypeImageIndex)
		}
	}
	type key struct {
		mediaType string
		digest    digest.Digest
		size      int64
	}
	seen := map[key]bool{}
	manifests := []ocispec.Descriptor{}
	for _, d := range append(old.Manifests, add...) {
		k := key{d.MediaType, d.Digest, d.Size}
		if seen[k] || k == (key{}) {
			continue
		}
		seen[k] = true
		manifests = append(manifests, d)
	}
	data, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: manifests,
	})
	if err != nil {
		return nil, fmt.Errorf("encode referrers index: %w", err)
	}
	return data, nil
}

// PushV1 pushes img as ref unchanged, then a v1 SOCI index of it with its
// zTOCs, and lists the index under the referrers fallback tag of img's
// manifest, keeping the referrers already listed there. The distribution
// registry (v3) has no referrers API, so the tag is always maintained.
func PushV1(ctx context.Context, ref string, img *image.Image, opts Options) (*Index, error) {
	repo, err := repositoryOf(ref)
	if err != nil {
		return nil, err
	}
	idx, err := BuildIndex(img, 1, opts)
	if err != nil {
		return nil, err
	}
	if err := image.Push(ctx, ref, img); err != nil {
		return nil, err
	}
	if err := pushIndex(ctx, ref, idx); err != nil {
		return nil, fmt.Errorf("push %s: %w", ref, err)
	}

	tagRef := repo.tagged(FallbackTag(img.ManifestDesc.Digest))
	var existing []byte
	desc, data, err := fetchManifest(ctx, tagRef)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("read referrers of %s: %w", ref, err)
	case desc.MediaType != ocispec.MediaTypeImageIndex:
		return nil, fmt.Errorf("referrers tag %s holds %s, not an image index", tagRef, desc.MediaType)
	default:
		existing = data
	}
	merged, err := FallbackIndex(existing, ReferrerDescriptor(idx))
	if err != nil {
		return nil, fmt.Errorf("referrers of %s: %w", ref, err)
	}
	if _, err := image.PushManifest(ctx, tagRef, ocispec.MediaTypeImageIndex, merged); err != nil {
		return nil, fmt.Errorf("push referrers of %s: %w", ref, err)
	}
	return idx, nil
}
