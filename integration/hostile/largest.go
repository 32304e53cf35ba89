package hostile

import (
	"errors"
	"fmt"
	"strings"

	"github.com/awslabs/soci-snapshotter/ztoc"
	fbs "github.com/awslabs/soci-snapshotter/ztoc/fbs/ztoc"
)

// Limits are the daemon's zTOC bounds ([limits] in its config) a crafted
// zTOC has to stay within.
type Limits struct {
	MaxZTOCBytes, MaxZTOCEntries, MaxZTOCHeapBytes int64
	MaxTreeDepth                                   int
}

// Shape describes what LargestAccepted made.
type Shape struct {
	Entries, Xattrs, ValueLen, Depth int
	Bytes                            int   // of the serialized zTOC
	Estimate                         int64 // the daemon's heap estimate of it
}

func (s Shape) String() string {
	return fmt.Sprintf("%d entries with %d xattrs of %d bytes each, a %d-deep chain; %d-byte zTOC, heap estimate %d MiB",
		s.Entries, s.Xattrs, s.ValueLen, s.Depth, s.Bytes, s.Estimate>>20)
}

// Filler shape: of the shapes tried against the daemon's estimate (many
// entries with short names, long names, long link targets, many small
// xattrs, few big xattrs), a few xattrs with values of a few KiB cost the
// most real memory per estimated byte (each value byte is estimated at 7:
// 4 for the copies of the flatbuffer, 3 decoded).
const (
	fillXattrs   = 4
	fillValueLen = 4000
)

// LargestAccepted adds to z a directory chain max_tree_depth deep and as
// many files under top, each with fillXattrs xattrs of fillValueLen
// bytes, as keep the daemon's heap estimate (fs/index/heap.go, reproduced
// by Estimate) just under lim.MaxZTOCHeapBytes, within the entry count and
// zTOC size bounds. It returns the serialized zTOC and its shape.
func LargestAccepted(z *ztoc.Ztoc, top string, lim Limits) ([]byte, Shape, error) {
	AddDeepChain(z, top+"-chain", lim.MaxTreeDepth)
	base := z.FileMetadata
	build := func(n int) ([]byte, int64, error) {
		z.FileMetadata = append(base[:len(base):len(base)], fillers(z, top, n)...)
		data, err := Encode(z)
		if err != nil {
			return nil, 0, err
		}
		est, err := Estimate(data)
		return data, est, err
	}
	_, est0, err := build(0)
	if err != nil {
		return nil, Shape{}, err
	}
	const probe = 256
	_, est1, err := build(probe)
	if err != nil {
		return nil, Shape{}, err
	}
	perEntry := (est1 - est0) / probe
	target := lim.MaxZTOCHeapBytes - lim.MaxZTOCHeapBytes/200 // 0.5% under
	n := int((target - est0) / perEntry)
	n = min(n, int(lim.MaxZTOCEntries)-len(base))
	for ; n > 0; n -= 1 + n/1000 {
		data, est, err := build(n)
		if err != nil {
			return nil, Shape{}, err
		}
		if est > lim.MaxZTOCHeapBytes || int64(len(data)) > lim.MaxZTOCBytes {
			continue
		}
		return data, Shape{Entries: len(z.FileMetadata), Xattrs: fillXattrs, ValueLen: fillValueLen,
			Depth: lim.MaxTreeDepth, Bytes: len(data), Estimate: est}, nil
	}
	return nil, Shape{}, errors.New("no filler fits the limits")
}

// fillers are n empty regular files top/DDDD/FFFFFF, 100 to a directory,
// each with fillXattrs xattrs of fillValueLen bytes.
func fillers(z *ztoc.Ztoc, top string, n int) []ztoc.FileMetadata {
	value := strings.Repeat("v", fillValueLen-8)
	files := make([]ztoc.FileMetadata, n)
	for i := range files {
		pax := make(map[string]string, fillXattrs)
		for j := range fillXattrs {
			pax[fmt.Sprintf("SCHILY.xattr.user.k%d", j)] = fmt.Sprintf("%08d", i) + value
		}
		files[i] = ztoc.FileMetadata{
			Name: fmt.Sprintf("%s/%04d/%06d", top, i/100, i), Type: "reg", Mode: 0o644,
			UncompressedOffset: z.UncompressedArchiveSize, TarHeaderOffset: z.UncompressedArchiveSize,
			PAXHeaders: pax,
		}
	}
	return files
}

// Estimate is the daemon's heap estimate of loading a zTOC (the sum
// checkFlatbuffer in fs/index/heap.go compares with max_ztoc_heap_bytes),
// reproduced from its cost model: 4 per flatbuffer byte, 1024 per entry,
// 512 per span, 2 per checkpoint byte, names and link targets twice, other
// strings once, xattr keys and values 3 times, 16 per string, 320 per
// xattr.
func Estimate(buf []byte) (est int64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("estimate: malformed flatbuffer: %v", r)
		}
	}()
	root := fbs.GetRootAsZtoc(buf, 0)
	toc := root.Toc(new(fbs.TOC))
	info := root.CompressionInfo(new(fbs.CompressionInfo))
	if toc == nil || info == nil {
		return 0, errors.New("estimate: no TOC or compression info")
	}
	n, spans := toc.MetadataLength(), info.SpanDigestsLength()
	est = 4*int64(len(buf)) + int64(n)*1024 + int64(spans)*512 + 2*int64(info.CheckpointsLength()) +
		int64(len(root.Version())+len(root.BuildToolIdentifier())) + 2*16
	for j := range spans {
		est += int64(len(info.SpanDigests(j)))
	}
	var md fbs.FileMetadata
	var x fbs.Xattr
	for i := range n {
		toc.Metadata(&md, i)
		est += 2*int64(len(md.Name())+len(md.Linkname())) + int64(len(md.Type())+len(md.Uname())+len(md.Gname())) + 5*16
		for j := range md.XattrsLength() {
			md.Xattrs(&x, j)
			est += 3*int64(len(x.Key())+len(x.Value())) + 320
		}
	}
	return est, nil
}
