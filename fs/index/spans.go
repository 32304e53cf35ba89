package index

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// The gzip checkpoint blob, as soci's gzip_zinfo.c lays it out (integers
// little endian): a header of the checkpoint count (int32) and span size
// (int64), then per checkpoint the compressed offset of its first full byte
// (int64), its uncompressed offset (int64), the number of bits (0-7) it
// takes from the byte before, and the 32 KiB inflate window. Version 1
// blobs omit checkpoint 0, which is then at compressed offset 10
// (after a bare gzip header), uncompressed 0, no bits, empty window.
const (
	windowSize     = 32 << 10
	checkpointSize = 8 + 8 + 1 + windowSize
	blobHeaderSize = 4 + 8
	v1FirstIn      = 10
)

// Bounds on a single span. Real spans are a few MiB; these keep one hostile
// span from exhausting memory, and keep the sizes the C code handles (with
// the padding Decompress adds) inside an int.
const (
	maxSpanUncompressed = 256 << 20
	maxSpanCompressed   = 512 << 20
)

// checkpoint is where inflate can resume: at compressed offset in (minus one
// byte when bits > 0) and uncompressed offset out.
type checkpoint struct {
	in, out int64
	bits    uint8
	window  []byte // the inflate window, in the blob; nil: all zeros (v1 checkpoint 0)
}

// layout is the span table of a zTOC and what decompressing needs.
type layout struct {
	table    span.Table
	spanSize int64
	bits     []uint8 // gzip: bits of checkpoint i, for span i
}

// spanLayout derives the span layout of a zTOC.
func spanLayout(z *ztoc.Ztoc) (layout, error) {
	n := int64(z.MaxSpanID) + 1
	if n < 1 || n != int64(len(z.SpanDigests)) {
		return layout{}, fmt.Errorf("max span id %d but %d span digests", z.MaxSpanID, len(z.SpanDigests))
	}
	var (
		l   layout
		err error
	)
	switch z.CompressionAlgorithm {
	case compression.Gzip:
		l, err = gzipSpans(z)
	case compression.Uncompressed:
		l, err = tarSpans(z)
	default:
		return layout{}, fmt.Errorf("unsupported compression %q", z.CompressionAlgorithm)
	}
	if err != nil {
		return layout{}, err
	}
	if err := l.table.Validate(); err != nil {
		return layout{}, err
	}
	return l, nil
}

// parseCheckpoints decodes a gzip checkpoint blob without the C code, and
// accepts exactly the blobs the C decoder accepts.
func parseCheckpoints(blob []byte) (int64, []checkpoint, error) {
	if len(blob) < blobHeaderSize || len(blob) > math.MaxInt32 {
		return 0, nil, fmt.Errorf("checkpoint blob of %d bytes", len(blob))
	}
	count := int64(int32(binary.LittleEndian.Uint32(blob)))
	spanSize := int64(binary.LittleEndian.Uint64(blob[4:]))
	body := int64(len(blob) - blobHeaderSize)
	first := int64(0)
	switch {
	case count < 1:
		return 0, nil, fmt.Errorf("checkpoint blob claims %d checkpoints", count)
	case body == count*checkpointSize:
	case body == (count-1)*checkpointSize:
		first = 1
	default:
		return 0, nil, fmt.Errorf("checkpoint blob of %d bytes does not hold %d checkpoints", len(blob), count)
	}
	cps := make([]checkpoint, count)
	if first == 1 {
		cps[0] = checkpoint{in: v1FirstIn}
	}
	for i := first; i < count; i++ {
		p := blob[blobHeaderSize+(i-first)*checkpointSize:]
		cps[i] = checkpoint{
			in:     int64(binary.LittleEndian.Uint64(p)),
			out:    int64(binary.LittleEndian.Uint64(p[8:])),
			bits:   p[16],
			window: p[17:checkpointSize],
		}
	}
	return spanSize, cps, nil
}

// gzipSpans lays out spans between consecutive checkpoints: span i starts
// at checkpoint i (one byte earlier when it starts inside a byte) and ends
// where checkpoint i+1 starts, or at the end of the blob and tar stream.
// Each span carries the sha256 of its checkpoint's inflate window, which
// decompressing it uses but its digest does not cover. soci's builder
// writes as window the last 32 KiB of the uncompressed stream before the
// checkpoint, zero-filled in front when fewer bytes precede it (so all
// zeros at checkpoint 0), whatever gzip members the stream has; the span
// manager checks it against the bytes its neighbour decompressed to.
func gzipSpans(z *ztoc.Ztoc) (layout, error) {
	spanSize, cps, err := parseCheckpoints(z.Checkpoints)
	if err != nil {
		return layout{}, err
	}
	if len(cps) != len(z.SpanDigests) {
		return layout{}, fmt.Errorf("%d checkpoints for %d spans", len(cps), len(z.SpanDigests))
	}
	if spanSize <= 0 || cps[0].out != 0 {
		return layout{}, fmt.Errorf("bad checkpoint header: span size %d, first offset %d", spanSize, cps[0].out)
	}
	bits := make([]uint8, len(cps))
	var zeros [32]byte
	if cps[0].window == nil {
		zeros = sha256.Sum256(make([]byte, windowSize))
	}
	t := span.Table{
		Spans:            make([]span.Span, len(cps)),
		CompressedSize:   int64(z.CompressedArchiveSize),
		UncompressedSize: int64(z.UncompressedArchiveSize),
	}
	for i, cp := range cps {
		s := span.Span{
			CompressedStart: cp.in, CompressedEnd: t.CompressedSize,
			UncompressedStart: cp.out, UncompressedEnd: t.UncompressedSize,
			Digest: z.SpanDigests[i], Window: zeros, HasWindow: true,
		}
		if cp.window != nil {
			s.Window = sha256.Sum256(cp.window)
		}
		if cp.bits > 0 {
			s.CompressedStart--
		}
		bits[i] = cp.bits
		if i+1 < len(cps) {
			next := cps[i+1]
			if next.in <= cp.in || next.out <= cp.out {
				return layout{}, fmt.Errorf("checkpoint %d does not follow checkpoint %d", i+1, i)
			}
			s.CompressedEnd, s.UncompressedEnd = next.in, next.out
		}
		if err := checkSpan(i, s, cp.bits, t); err != nil {
			return layout{}, err
		}
		t.Spans[i] = s
	}
	return layout{table: t, spanSize: spanSize, bits: bits}, nil
}

// checkSpan checks what Table.Validate does not: bit counts, digest
// algorithm, non-empty compressed ranges and the size bounds.
func checkSpan(i int, s span.Span, bits uint8, t span.Table) error {
	switch {
	case bits > 7:
		return fmt.Errorf("checkpoint %d: %d bits", i, bits)
	case s.CompressedStart < 0 || s.CompressedStart >= s.CompressedEnd || s.CompressedEnd > t.CompressedSize:
		return fmt.Errorf("span %d: compressed range [%d, %d) outside a %d-byte blob", i, s.CompressedStart, s.CompressedEnd, t.CompressedSize)
	case s.UncompressedStart > s.UncompressedEnd || s.UncompressedEnd > t.UncompressedSize:
		return fmt.Errorf("span %d: uncompressed range [%d, %d) outside a %d-byte tar stream", i, s.UncompressedStart, s.UncompressedEnd, t.UncompressedSize)
	case s.UncompressedEnd-s.UncompressedStart > maxSpanUncompressed || s.CompressedEnd-s.CompressedStart > maxSpanCompressed:
		return fmt.Errorf("span %d: too large", i)
	case s.Digest.Validate() != nil || s.Digest.Algorithm() != digest.SHA256:
		return fmt.Errorf("span %d: bad digest %q", i, s.Digest)
	}
	return nil
}

// tarSpans lays out an uncompressed tar layer in spans of the zinfo's span
// size. Compressed and uncompressed ranges are the same bytes, so the
// table's stream is the whole blob (the tar stream proper may end earlier).
func tarSpans(z *ztoc.Ztoc) (layout, error) {
	zi, err := compression.NewZinfo(compression.Uncompressed, z.Checkpoints)
	if err != nil {
		return layout{}, fmt.Errorf("tar zinfo: %w", err)
	}
	spanSize := int64(zi.SpanSize())
	zi.Close()
	size := int64(z.CompressedArchiveSize)
	if spanSize <= 0 || spanSize > maxSpanUncompressed {
		return layout{}, fmt.Errorf("tar zinfo: span size %d", spanSize)
	}
	if int64(z.UncompressedArchiveSize) > size {
		return layout{}, errors.New("tar stream larger than the blob")
	}
	n := (size-1)/spanSize + 1
	if n != int64(len(z.SpanDigests)) {
		return layout{}, fmt.Errorf("%d spans of %d bytes in %d bytes, but %d span digests", n, spanSize, size, len(z.SpanDigests))
	}
	t := span.Table{Spans: make([]span.Span, n), CompressedSize: size, UncompressedSize: size}
	for i := range t.Spans {
		start := int64(i) * spanSize
		end := min(start+spanSize, size)
		s := span.Span{CompressedStart: start, CompressedEnd: end, UncompressedStart: start, UncompressedEnd: end, Digest: z.SpanDigests[i]}
		if err := checkSpan(i, s, 0, t); err != nil {
			return layout{}, err
		}
		t.Spans[i] = s
	}
	return layout{table: t, spanSize: spanSize}, nil
}
