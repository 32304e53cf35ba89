package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Layer is one image layer: its tar entries in order, gzip-compressed unless
// Uncompressed is set. Parent directories are not added implicitly.
type Layer struct {
	Entries      []Entry
	Uncompressed bool
}

// builtLayer is a layer's blob with its descriptor and diff ID.
type builtLayer struct {
	blob   []byte
	desc   ocispec.Descriptor
	diffID digest.Digest
}

// build writes the layer's tar stream, compresses it and digests both forms.
func (l Layer) build() (builtLayer, error) {
	var blob bytes.Buffer
	diffID := digest.SHA256.Digester()
	var (
		compressor *gzip.Writer
		out        io.Writer = &blob
		mediaType            = ocispec.MediaTypeImageLayer
	)
	if !l.Uncompressed {
		// A fresh gzip.Writer has a zero header (no name, no mtime), so the
		// output depends only on the input.
		compressor = gzip.NewWriter(&blob)
		out = compressor
		mediaType = ocispec.MediaTypeImageLayerGzip
	}
	tw := tar.NewWriter(io.MultiWriter(out, diffID.Hash()))
	for i, e := range l.Entries {
		if err := writeEntry(tw, e); err != nil {
			return builtLayer{}, fmt.Errorf("entry %d: %w", i, err)
		}
	}
	if err := tw.Close(); err != nil {
		return builtLayer{}, fmt.Errorf("close tar: %w", err)
	}
	if compressor != nil {
		if err := compressor.Close(); err != nil {
			return builtLayer{}, fmt.Errorf("close gzip: %w", err)
		}
	}
	data := blob.Bytes()
	return builtLayer{
		blob: data,
		desc: ocispec.Descriptor{
			MediaType: mediaType,
			Digest:    digest.FromBytes(data),
			Size:      int64(len(data)),
		},
		diffID: diffID.Digest(),
	}, nil
}
