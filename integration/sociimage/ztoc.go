package sociimage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/containerd/containerd/v2/core/images"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// opaqueWhiteout marks an opaque directory; a layer holding one keeps its
// xattrs enabled, as does a layer with any xattr.
const opaqueWhiteout = ".wh..wh..opq"

// builtZTOC is one layer's serialized zTOC and its descriptor in the index.
type builtZTOC struct {
	desc ocispec.Descriptor
	data []byte
}

// buildZTOC builds the zTOC of one layer blob. It returns nil for a layer
// compressed in a way the zTOC builder does not support (the reference skips
// those layers too).
func buildZTOC(layer ocispec.Descriptor, blob []byte, opts Options) (*builtZTOC, error) {
	algorithm, err := compressionOf(layer.MediaType)
	if err != nil {
		return nil, err
	}
	builder := ztoc.NewBuilder(opts.BuildTool)
	if !builder.CheckCompressionAlgorithm(algorithm) {
		return nil, nil
	}
	path, err := writeTemp(blob)
	if err != nil {
		return nil, err
	}
	defer os.Remove(path)

	toc, err := builder.BuildZtoc(path, opts.SpanSize, ztoc.WithCompression(algorithm))
	if err != nil {
		return nil, err
	}
	r, desc, err := ztoc.Marshal(toc)
	if err != nil {
		return nil, fmt.Errorf("encode zTOC: %w", err)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("encode zTOC: %w", err)
	}
	desc.MediaType = ZTOCMediaType
	desc.Annotations = map[string]string{
		AnnotationLayerMediaType: layer.MediaType,
		AnnotationLayerDigest:    layer.Digest.String(),
		AnnotationSpanSize:       strconv.FormatInt(opts.SpanSize, 10),
	}
	if opts.DisableXattrs && !hasXattrs(toc) {
		desc.Annotations[AnnotationDisableXattrs] = "true"
	}
	return &builtZTOC{desc: desc, data: data}, nil
}

// compressionOf names the zTOC compression algorithm of a layer media type
// the way the reference does (containerd's DiffCompression, with a plain
// OCI tar meaning uncompressed). Non-layer media types are an error.
func compressionOf(mediaType string) (string, error) {
	if !images.IsLayerType(mediaType) {
		return "", fmt.Errorf("media type %q is not a layer", mediaType)
	}
	algorithm, err := images.DiffCompression(context.Background(), mediaType)
	if err != nil {
		return "", fmt.Errorf("layer compression: %w", err)
	}
	if algorithm == "" && mediaType == ocispec.MediaTypeImageLayer {
		algorithm = compression.Uncompressed
	}
	return algorithm, nil
}

// hasXattrs reports whether any entry of the layer has an xattr or is an
// opaque-directory marker (which the snapshotter turns into an xattr).
func hasXattrs(toc *ztoc.Ztoc) bool {
	for _, md := range toc.TOC.FileMetadata {
		if len(md.Xattrs()) > 0 || strings.HasSuffix(md.Name, opaqueWhiteout) {
			return true
		}
	}
	return false
}

// writeTemp stores blob in a temporary file: the zTOC builder reads files.
func writeTemp(blob []byte) (string, error) {
	f, err := os.CreateTemp("", "sociimage-layer-*")
	if err != nil {
		return "", fmt.Errorf("temporary layer file: %w", err)
	}
	_, werr := f.Write(blob)
	if err := errors.Join(werr, f.Close()); err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("write temporary layer file: %w", err)
	}
	return f.Name(), nil
}
