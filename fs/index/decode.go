package index

import (
	"fmt"
	"sort"
	"strings"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	fbs "github.com/awslabs/soci-snapshotter/ztoc/fbs/ztoc"
	"github.com/opencontainers/go-digest"
)

// decodeFlatbuffer decodes a zTOC flatbuffer that checkFlatbuffer accepted
// into soci's Ztoc, as soci's Unmarshal does, without its two copies of
// the bytes: Unmarshal reads its input into a buffer of its own (growing
// it, so about 2.5 times the size is allocated) and copies the checkpoint
// blob out of it. Here the Ztoc's Checkpoints is the checkpoint blob within
// data, which must therefore stay unchanged while the Ztoc is used.
func decodeFlatbuffer(data []byte) (z *ztoc.Ztoc, err error) {
	defer func() {
		if r := recover(); r != nil {
			z, err = nil, fmt.Errorf("decode zTOC: malformed flatbuffer: %v", r)
		}
	}()
	root := fbs.GetRootAsZtoc(data, 0)
	toc := root.Toc(new(fbs.TOC))
	info := root.CompressionInfo(new(fbs.CompressionInfo))
	if toc == nil || info == nil {
		return nil, fmt.Errorf("decode zTOC: no TOC or compression info")
	}
	z = &ztoc.Ztoc{
		Version:                 ztoc.Version(root.Version()),
		BuildToolIdentifier:     string(root.BuildToolIdentifier()),
		CompressedArchiveSize:   compression.Offset(root.CompressedArchiveSize()),
		UncompressedArchiveSize: compression.Offset(root.UncompressedArchiveSize()),
	}
	files, err := decodeFiles(toc)
	if err != nil {
		return nil, err
	}
	z.FileMetadata = files
	z.MaxSpanID = compression.SpanID(info.MaxSpanId())
	z.SpanDigests = make([]digest.Digest, info.SpanDigestsLength())
	for i := range z.SpanDigests {
		// Invalid digests are kept as "" for convert to refuse.
		d, _ := digest.Parse(string(info.SpanDigests(i)))
		z.SpanDigests[i] = d
	}
	z.Checkpoints = info.CheckpointsBytes()
	z.CompressionAlgorithm = strings.ToLower(info.CompressionAlgorithm().String())
	return z, nil
}

// decodeFiles decodes the file table, ordered by data offset, with each
// entry's tar header offset derived as soci's decoder does (a table whose
// entries overlap is refused).
func decodeFiles(toc *fbs.TOC) ([]ztoc.FileMetadata, error) {
	files := make([]ztoc.FileMetadata, toc.MetadataLength())
	var md fbs.FileMetadata
	var x fbs.Xattr
	for i := range files {
		toc.Metadata(&md, i)
		f := &files[i]
		f.Name = string(md.Name())
		f.Type = string(md.Type())
		f.UncompressedOffset = compression.Offset(md.UncompressedOffset())
		f.UncompressedSize = compression.Offset(md.UncompressedSize())
		f.Linkname = string(md.Linkname())
		f.Mode = md.Mode()
		f.UID, f.GID = int(md.Uid()), int(md.Gid())
		f.Uname, f.Gname = string(md.Uname()), string(md.Gname())
		_ = f.ModTime.UnmarshalText(md.ModTime()) // the zero time when malformed, as soci
		f.Devmajor, f.Devminor = md.Devmajor(), md.Devminor()
		f.PAXHeaders = make(map[string]string, md.XattrsLength())
		for j := range md.XattrsLength() {
			md.Xattrs(&x, j)
			f.PAXHeaders[string(x.Key())] = string(x.Value())
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].UncompressedOffset < files[j].UncompressedOffset })
	next := compression.Offset(0) // the first tar header is at offset 0
	for i := range files {
		f := &files[i]
		if next > f.UncompressedOffset {
			return nil, fmt.Errorf("decode zTOC: %w", ztoc.ErrInvalidTOCEntry)
		}
		f.TarHeaderOffset = next
		next = ztoc.AlignToTarBlock(f.UncompressedOffset + f.UncompressedSize)
	}
	return files, nil
}
