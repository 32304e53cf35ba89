package sociimage

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/integration/image"
)

// SetZTOC replaces the zTOC of an indexed layer by data (for tests that
// serve altered zTOCs): the descriptor keeps its annotations and gets data's
// digest and size, and the index manifest is encoded again.
func (x *Index) SetZTOC(layer digest.Digest, data []byte) error {
	old, ok := x.ZTOCByLayer[layer]
	if !ok {
		return fmt.Errorf("layer %s has no zTOC in the index", layer)
	}
	d := digest.FromBytes(data)
	for i := range x.Manifest.Layers {
		desc := &x.Manifest.Layers[i]
		if desc.Digest == old && desc.Annotations[AnnotationLayerDigest] == layer.String() {
			desc.Digest, desc.Size = d, int64(len(data))
		}
	}
	delete(x.ZTOCs, old)
	x.ZTOCs[d] = data
	x.ZTOCByLayer[layer] = d
	return x.encode()
}

// AddLayer appends desc to the index manifest's layers as it is, digest
// unchecked (for tests that serve malformed indices), and encodes the
// manifest again. Its content is not part of the index: the caller pushes
// it, if it exists at all.
func (x *Index) AddLayer(desc ocispec.Descriptor) error {
	x.Manifest.Layers = append(x.Manifest.Layers, desc)
	return x.encode()
}

// encode sets Bytes and Desc from Manifest.
func (x *Index) encode() error {
	data, err := json.Marshal(x.Manifest)
	if err != nil {
		return fmt.Errorf("encode SOCI index: %w", err)
	}
	x.Bytes = data
	x.Desc.Digest = digest.FromBytes(data)
	x.Desc.Size = int64(len(data))
	return nil
}

// IndexPusher uploads a SOCI index manifest (idx.Bytes as idx.Desc), whose
// zTOCs and config blob are already pushed, to the repository of ref.
type IndexPusher func(ctx context.Context, ref string, idx *Index) error

// PushV2Built is PushV2 with an index built (and perhaps altered) by the
// caller. push uploads the index manifest; nil means a plain manifest PUT.
func PushV2Built(ctx context.Context, ref string, img *image.Image, idx *Index, push IndexPusher) (ocispec.Descriptor, error) {
	repo, err := repositoryOf(ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	manifestData, manifestDesc, err := AnnotatedManifest(img, idx.Desc)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	indexData, _, err := V2ImageIndex(manifestDesc, idx.Desc)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := pushBlobs(ctx, ref, img); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push %s: %w", ref, err)
	}
	for _, z := range idx.Manifest.Layers {
		data, ok := idx.ZTOCs[z.Digest]
		if !ok {
			continue // a descriptor added by AddLayer
		}
		if err := image.PushBlob(ctx, ref, z, data); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("push zTOC: %w", err)
		}
	}
	if err := image.PushBlob(ctx, ref, idx.ConfigDesc(), []byte(ConfigContent)); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push SOCI index config: %w", err)
	}
	if push == nil {
		_, err = image.PushManifest(ctx, repo.at(idx.Desc.Digest), idx.Desc.MediaType, idx.Bytes)
	} else {
		err = push(ctx, ref, idx)
	}
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push SOCI index of %s: %w", ref, err)
	}
	if _, err := image.PushManifest(ctx, repo.at(manifestDesc.Digest), manifestDesc.MediaType, manifestData); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push annotated manifest of %s: %w", ref, err)
	}
	if _, err := image.PushManifest(ctx, ref, ocispec.MediaTypeImageIndex, indexData); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push image index of %s: %w", ref, err)
	}
	return manifestDesc, nil
}
