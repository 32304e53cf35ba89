// Package hostile crafts malicious SOCI artefacts for the adversarial
// integration tests: zTOCs whose file table or checkpoints lie (built from a
// real zTOC, then altered), flatbuffers that expand far beyond their size,
// and SOCI index manifests the registry would refuse to take by a PUT. It is
// not part of the snapshotter's flow: it produces what the daemon must refuse
// or contain.
package hostile

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/opencontainers/go-digest"
)

// Decode parses a serialized zTOC.
func Decode(data []byte) (*ztoc.Ztoc, error) {
	z, err := ztoc.Unmarshal(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("decode zTOC: %w", err)
	}
	return z, nil
}

// Encode serializes a zTOC, whatever it holds.
func Encode(z *ztoc.Ztoc) ([]byte, error) {
	r, _, err := ztoc.Marshal(z)
	if err != nil {
		return nil, fmt.Errorf("encode zTOC: %w", err)
	}
	return io.ReadAll(r)
}

// entry returns the file table entry named name.
func entry(z *ztoc.Ztoc, name string) (*ztoc.FileMetadata, error) {
	for i := range z.FileMetadata {
		if z.FileMetadata[i].Name == name {
			return &z.FileMetadata[i], nil
		}
	}
	return nil, fmt.Errorf("zTOC has no entry %q", name)
}

// Rename gives the entry named from the name to, offsets and all unchanged.
func Rename(z *ztoc.Ztoc, from, to string) error {
	e, err := entry(z, from)
	if err != nil {
		return err
	}
	e.Name = to
	return nil
}

// MoveBeyond points the data of the regular file name past the end of the
// layer: its offset becomes the size of the compressed blob plus 1 MiB, far
// beyond the tar stream too.
func MoveBeyond(z *ztoc.Ztoc, name string) error {
	e, err := entry(z, name)
	if err != nil {
		return err
	}
	if e.Type != "reg" {
		return fmt.Errorf("entry %q is a %s, not a regular file", name, e.Type)
	}
	e.UncompressedOffset = z.CompressedArchiveSize + z.UncompressedArchiveSize + 1<<20
	return nil
}

// AddDeepChain adds a directory nested depth levels deep below top (one
// entry whose name has depth components), as the last entry of the table.
// It returns the entry's name.
func AddDeepChain(z *ztoc.Ztoc, top string, depth int) string {
	name := top + strings.Repeat("/d", depth-1)
	z.FileMetadata = append(z.FileMetadata, ztoc.FileMetadata{
		Name: name, Type: "dir", Mode: 0o755,
		UncompressedOffset: z.UncompressedArchiveSize,
		TarHeaderOffset:    z.UncompressedArchiveSize,
	})
	return name
}

// Checkpoint blob layout (gzip zinfo, little endian): int32 count, int64
// span size, then per checkpoint int64 compressed offset, int64
// uncompressed offset, one byte of bits and the 32 KiB window. The first
// checkpoint may be left out (then it is at compressed offset 10).
const (
	headerSize     = 4 + 8
	windowSize     = 32 << 10
	checkpointSize = 8 + 8 + 1 + windowSize
	implicitFirst  = 10
)

// checkpoint is one checkpoint record of a gzip zinfo blob.
type checkpoint struct {
	pos     int // of the record in the blob; -1 for a left-out first one
	in, out int64
	bits    byte
}

// checkpoints parses the records of a gzip zTOC's checkpoint blob.
func checkpoints(z *ztoc.Ztoc) ([]checkpoint, error) {
	if z.CompressionAlgorithm != compression.Gzip {
		return nil, fmt.Errorf("zTOC compression %q, want gzip", z.CompressionAlgorithm)
	}
	b := z.Checkpoints
	if len(b) < headerSize {
		return nil, errors.New("checkpoint blob too short")
	}
	count := int(int32(binary.LittleEndian.Uint32(b)))
	body := len(b) - headerSize
	var cps []checkpoint
	switch {
	case count >= 1 && body == count*checkpointSize:
	case count >= 1 && body == (count-1)*checkpointSize:
		cps = append(cps, checkpoint{pos: -1, in: implicitFirst})
	default:
		return nil, fmt.Errorf("checkpoint blob of %d bytes for %d checkpoints", len(b), count)
	}
	for pos := headerSize; pos < len(b); pos += checkpointSize {
		cps = append(cps, checkpoint{
			pos:  pos,
			in:   int64(binary.LittleEndian.Uint64(b[pos:])),
			out:  int64(binary.LittleEndian.Uint64(b[pos+8:])),
			bits: b[pos+16],
		})
	}
	return cps, nil
}

// Spans returns how many spans a gzip zTOC has.
func Spans(z *ztoc.Ztoc) (int, error) {
	cps, err := checkpoints(z)
	return len(cps), err
}

// AlterWindows flips the bits of every checkpoint window (every span but
// the first resumes inflate from one), leaving offsets, span digests and
// the compressed bytes as they were: only the windows lie, so inflating a
// span gives other bytes than the layer holds. It returns how many windows
// it altered.
func AlterWindows(z *ztoc.Ztoc) (int, error) {
	cps, err := checkpoints(z)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, cp := range cps {
		if cp.pos < 0 || cp.out == 0 {
			continue
		}
		w := z.Checkpoints[cp.pos+17 : cp.pos+17+windowSize]
		for i := range w {
			w[i] ^= 0x5a
		}
		n++
	}
	if n == 0 {
		return 0, errors.New("no checkpoint with a window: the layer has a single span")
	}
	return n, nil
}

// OverlapSpans makes span 2 start where span 1 starts (checkpoint 2 becomes
// a copy of checkpoint 1), so that span 1 is empty and span 2 covers span
// 1's bytes as well as its own. The span digests are computed again from
// blob for the altered layout, so that only the overlap is wrong.
func OverlapSpans(z *ztoc.Ztoc, blob []byte) error {
	cps, err := checkpoints(z)
	if err != nil {
		return err
	}
	if len(cps) < 3 || cps[1].pos < 0 || cps[2].pos < 0 {
		return fmt.Errorf("%d spans: need 3 or more", len(cps))
	}
	copy(z.Checkpoints[cps[2].pos:cps[2].pos+checkpointSize], z.Checkpoints[cps[1].pos:cps[1].pos+checkpointSize])
	return SetSpanDigests(z, blob)
}

// SetSpanDigests sets the span digests of a gzip zTOC to the digests of
// blob's bytes between consecutive checkpoints (from one byte early when a
// checkpoint starts inside a byte); an empty or inverted range gets the
// digest of no bytes.
func SetSpanDigests(z *ztoc.Ztoc, blob []byte) error {
	cps, err := checkpoints(z)
	if err != nil {
		return err
	}
	digests := make([]digest.Digest, len(cps))
	for i, cp := range cps {
		start, end := cp.in, int64(len(blob))
		if cp.bits > 0 {
			start--
		}
		if i+1 < len(cps) {
			end = cps[i+1].in
		}
		var part []byte
		if 0 <= start && start < end && end <= int64(len(blob)) {
			part = blob[start:end]
		}
		sum := sha256.Sum256(part)
		digests[i] = digest.NewDigestFromBytes(digest.SHA256, sum[:])
	}
	z.SpanDigests = digests
	z.MaxSpanID = compression.SpanID(len(cps) - 1)
	return nil
}
