package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/ztoc"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/opencontainers/go-digest"
)

// ErrNoZTOC is wrapped by Open's error when the index has no zTOC for the
// layer. It deliberately does not wrap errdefs.ErrNotFound, so that callers
// can tell "the image has no index" from "the index skips this layer".
var ErrNoZTOC = errors.New("no zTOC for the layer in the SOCI index")

// Open loads the zTOC of an image layer (from local disk, else from the
// registry, digest-verified and then stored on disk), validates and converts
// it. The caller must Close the Layer.
func (s *Store) Open(ctx context.Context, ref string, idx *Index, layer digest.Digest) (*Layer, error) {
	desc, ok := idx.ZTOC(layer)
	if !ok {
		return nil, fmt.Errorf("layer %s, SOCI index %s: %w", layer, idx.Digest, ErrNoZTOC)
	}
	// Real zTOCs are about 32 KiB per span plus the file list: some MiB
	// per GiB of layer with the default 4 MiB spans.
	if desc.Size > s.lim.MaxZTOCBytes {
		return nil, fmt.Errorf("zTOC %s of layer %s: %d bytes, more than limits.max_ztoc_bytes (%d)",
			desc.Digest, layer, desc.Size, s.lim.MaxZTOCBytes)
	}
	data, err := s.ztocBytes(ctx, ref, desc)
	if err != nil {
		return nil, fmt.Errorf("zTOC %s of layer %s: %w", desc.Digest, layer, err)
	}
	l, err := ParseZTOC(data, s.lim)
	if err != nil {
		return nil, fmt.Errorf("zTOC %s of layer %s: %w", desc.Digest, layer, err)
	}
	l.DisableXattrs = desc.Annotations[soci.IndexAnnotationDisableXAttrs] == "true"
	return l, nil
}

// ztocBytes returns the verified bytes of a zTOC; concurrent callers for one
// zTOC share one download.
func (s *Store) ztocBytes(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	if err := checkDescriptor(desc, s.lim.MaxZTOCBytes); err != nil {
		return nil, fmt.Errorf("zTOC descriptor: %w", err)
	}
	if data, ok := s.readBlob(ctx, desc.Digest); ok {
		return data, nil
	}
	// singleflight re-panics in a new goroutine: guard the work itself.
	ch := s.fetches.DoChan(desc.Digest.String(), func() (any, error) {
		return guard(ctx, "fetch zTOC", func() (any, error) { return s.fetchZTOC(ctx, ref, desc) })
	})
	v, err := wait(ctx, ch)
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}

// fetchZTOC does ztocBytes' shared work: the local copy, else a verified
// download stored on disk.
func (s *Store) fetchZTOC(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	if data, ok := s.readBlob(ctx, desc.Digest); ok {
		return data, nil
	}
	wctx, cancel := s.workContext(ctx)
	defer cancel()
	data, err := s.reg.FetchBlob(wctx, ref, desc)
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	if int64(len(data)) != desc.Size {
		return nil, fmt.Errorf("got %d bytes, the index says %d", len(data), desc.Size)
	}
	if err := verify(desc.Digest, data); err != nil {
		return nil, err
	}
	if err := s.writeBlob(desc.Digest, data); err != nil {
		return nil, err
	}
	return data, nil
}

// ParseZTOC decodes, validates and converts a serialized zTOC within lim
// (zero fields take the defaults). The caller must Close the Layer.
func ParseZTOC(data []byte, lim Limits) (*Layer, error) {
	z, err := decodeZTOC(data, lim.withDefaults())
	if err != nil {
		return nil, err
	}
	c, err := convert(z)
	if err != nil {
		return nil, err
	}
	return newLayer(z, c)
}

// decodeZTOC bounds the flatbuffer (size, entries, estimated heap) and
// decodes it with soci's unmarshaler.
func decodeZTOC(data []byte, lim Limits) (*ztoc.Ztoc, error) {
	if int64(len(data)) > lim.MaxZTOCBytes {
		return nil, fmt.Errorf("decode zTOC: %d bytes, more than limits.max_ztoc_bytes (%d)", len(data), lim.MaxZTOCBytes)
	}
	if _, err := checkFlatbuffer(data, lim); err != nil {
		return nil, err
	}
	z, err := ztoc.Unmarshal(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("decode zTOC: %w", err)
	}
	return z, nil
}
