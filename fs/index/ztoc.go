package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/ztoc"
	fbs "github.com/awslabs/soci-snapshotter/ztoc/fbs/ztoc"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/opencontainers/go-digest"
)

// ErrNoZTOC is wrapped by Open's error when the index has no zTOC for the
// layer. It deliberately does not wrap errdefs.ErrNotFound, so that callers
// can tell "the image has no index" from "the index skips this layer".
var ErrNoZTOC = errors.New("no zTOC for the layer in the SOCI index")

// maxZTOCSize bounds the zTOC the store fetches and holds in memory. Real
// ones are about 32 KiB per span plus the file list: some MiB per GiB of
// layer with the default 4 MiB spans.
const maxZTOCSize = 1 << 30

// Open loads the zTOC of an image layer (from local disk, else from the
// registry, digest-verified and then stored on disk), validates and converts
// it. The caller must Close the Layer.
func (s *Store) Open(ctx context.Context, ref string, idx *Index, layer digest.Digest) (*Layer, error) {
	desc, ok := idx.ZTOC(layer)
	if !ok {
		return nil, fmt.Errorf("layer %s, SOCI index %s: %w", layer, idx.Digest, ErrNoZTOC)
	}
	if desc.Size > maxZTOCSize {
		return nil, fmt.Errorf("zTOC %s of layer %s: %d bytes is too large", desc.Digest, layer, desc.Size)
	}
	data, err := s.ztocBytes(ctx, ref, desc)
	if err != nil {
		return nil, fmt.Errorf("zTOC %s of layer %s: %w", desc.Digest, layer, err)
	}
	l, err := ParseZTOC(data)
	if err != nil {
		return nil, fmt.Errorf("zTOC %s of layer %s: %w", desc.Digest, layer, err)
	}
	l.DisableXattrs = desc.Annotations[soci.IndexAnnotationDisableXAttrs] == "true"
	return l, nil
}

// ztocBytes returns the verified bytes of a zTOC; concurrent callers for one
// zTOC share one download.
func (s *Store) ztocBytes(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	if data, ok := s.readBlob(ctx, desc.Digest); ok {
		return data, nil
	}
	ch := s.fetches.DoChan(desc.Digest.String(), func() (any, error) {
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
	})
	v, err := wait(ctx, ch)
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}

// ParseZTOC decodes, validates and converts a serialized zTOC. The caller
// must Close the Layer.
func ParseZTOC(data []byte) (*Layer, error) {
	z, err := decodeZTOC(data)
	if err != nil {
		return nil, err
	}
	c, err := convert(z)
	if err != nil {
		return nil, err
	}
	return newLayer(z, c)
}

// decodeZTOC bounds the flatbuffer and decodes it with soci's unmarshaler.
func decodeZTOC(data []byte) (*ztoc.Ztoc, error) {
	if err := checkFlatbuffer(data); err != nil {
		return nil, err
	}
	z, err := ztoc.Unmarshal(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("decode zTOC: %w", err)
	}
	return z, nil
}

// budget bounds the work and memory of decoding a flatbuffer of n bytes.
// A flatbuffer built without shared data needs 4 bytes per vector element,
// and every string it holds is stored in it; a hostile one could point many
// elements at one big string or vector, so decoding it would take memory
// quadratic in its size.
type budget struct {
	slots, bytes int
}

func newBudget(n int) budget { return budget{slots: n / 4, bytes: 4*n + 1<<20} }

func (b *budget) take(slots, bytes int) error {
	b.slots -= slots
	b.bytes -= bytes
	if b.slots < 0 || b.bytes < 0 {
		return errors.New("decode zTOC: vectors or strings larger than the flatbuffer")
	}
	return nil
}

// checkFlatbuffer walks a zTOC flatbuffer the way ztoc.Unmarshal will and
// fails when that would allocate or loop out of proportion to its size.
func checkFlatbuffer(buf []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("decode zTOC: malformed flatbuffer: %v", r)
		}
	}()
	if len(buf) < 8 {
		return fmt.Errorf("decode zTOC: %d bytes is too short", len(buf))
	}
	root := fbs.GetRootAsZtoc(buf, 0)
	toc := root.Toc(new(fbs.TOC))
	info := root.CompressionInfo(new(fbs.CompressionInfo))
	if toc == nil || info == nil {
		return errors.New("decode zTOC: no TOC or compression info")
	}
	b := newBudget(len(buf))
	n, spans := toc.MetadataLength(), info.SpanDigestsLength()
	if err := b.take(n+spans, len(root.Version())+len(root.BuildToolIdentifier())); err != nil {
		return err
	}
	for j := range spans {
		if err := b.take(0, len(info.SpanDigests(j))); err != nil {
			return err
		}
	}
	var md fbs.FileMetadata
	for i := range n {
		toc.Metadata(&md, i)
		if err := b.take(md.XattrsLength(), len(md.Name())+len(md.Type())+len(md.Linkname())+
			len(md.Uname())+len(md.Gname())+len(md.ModTime())); err != nil {
			return err
		}
		if err := checkXattrs(&md, &b); err != nil {
			return err
		}
	}
	return nil
}

func checkXattrs(md *fbs.FileMetadata, b *budget) error {
	var x fbs.Xattr
	for j := range md.XattrsLength() {
		md.Xattrs(&x, j)
		if err := b.take(0, len(x.Key())+len(x.Value())); err != nil {
			return err
		}
	}
	return nil
}
