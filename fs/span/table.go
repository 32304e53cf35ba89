package span

import (
	"fmt"
	"sort"

	"github.com/opencontainers/go-digest"
)

// Span is one independently decompressible piece of a layer blob.
// Compressed ranges of neighbouring gzip spans may overlap by one byte (a
// checkpoint that starts inside a byte); uncompressed ranges tile the layer.
type Span struct {
	CompressedStart, CompressedEnd     int64 // [start, end) in the blob
	UncompressedStart, UncompressedEnd int64 // [start, end) in the tar stream
	// Digest is the sha256 of blob[CompressedStart:CompressedEnd], from the zTOC.
	Digest digest.Digest
	// Window is, when HasWindow (gzip), the sha256 of the 32 KiB inflate
	// window decompressing the span starts from: the last WindowSize bytes
	// of the tar stream before UncompressedStart, zero-filled in front
	// when fewer precede it. Digest does not cover it, so the Manager
	// checks it against what the previous span decompressed to.
	Window    [32]byte
	HasWindow bool
}

// WindowSize is the size of a gzip checkpoint's inflate window.
const WindowSize = 32 << 10

// Table is the span layout of one layer blob.
type Table struct {
	Spans            []Span
	CompressedSize   int64 // size of the blob
	UncompressedSize int64 // size of the tar stream
}

// Validate checks that the spans are ordered, non-empty except possibly the
// last, tile [0, UncompressedSize) without gaps and stay inside the blob.
func (t Table) Validate() error {
	if len(t.Spans) == 0 {
		return fmt.Errorf("span table: no spans")
	}
	var next int64
	for i, s := range t.Spans {
		if s.UncompressedStart != next {
			return fmt.Errorf("span table: span %d starts at %d, want %d", i, s.UncompressedStart, next)
		}
		if s.UncompressedEnd < s.UncompressedStart || s.CompressedEnd < s.CompressedStart {
			return fmt.Errorf("span table: span %d has a negative size", i)
		}
		if s.CompressedStart < 0 || s.CompressedEnd > t.CompressedSize {
			return fmt.Errorf("span table: span %d [%d, %d) outside the blob of %d bytes", i, s.CompressedStart, s.CompressedEnd, t.CompressedSize)
		}
		if err := s.Digest.Validate(); err != nil {
			return fmt.Errorf("span table: span %d: %w", i, err)
		}
		next = s.UncompressedEnd
	}
	if next != t.UncompressedSize {
		return fmt.Errorf("span table: spans end at %d, want %d", next, t.UncompressedSize)
	}
	return nil
}

// Len is the number of uncompressed bytes in the span.
func (s Span) Len() int64 { return s.UncompressedEnd - s.UncompressedStart }

// Find returns the index of the span holding uncompressed offset off by
// binary search; off must be in [0, UncompressedSize). Empty spans are never
// returned.
func (t Table) Find(off int64) int {
	return sort.Search(len(t.Spans), func(k int) bool { return t.Spans[k].UncompressedEnd > off })
}

// Bytes names the range of a span that bounds a run (see Table.Run).
type Bytes uint8

const (
	// CompressedBytes bounds a run by blob bytes: the length of one range
	// request.
	CompressedBytes Bytes = iota
	// UncompressedBytes bounds a run by tar-stream bytes.
	UncompressedBytes
)

// Run returns the last span k in [first, last] such that spans first..k,
// measured in b from the start of span first to the end of span k (the
// one-byte overlaps of gzip spans count once), hold at most max bytes; k is
// first when span first alone is larger. It is how adjacent spans are
// grouped into one range request everywhere: demand fetches, read-ahead and
// the background walk. first and last must be spans of t.
func (t Table) Run(first, last int, max int64, b Bytes) int {
	k := first
	if b == UncompressedBytes {
		start := t.Spans[first].UncompressedStart
		for k < last && t.Spans[k+1].UncompressedEnd-start <= max {
			k++
		}
		return k
	}
	start := t.Spans[first].CompressedStart
	for k < last && t.Spans[k+1].CompressedEnd-start <= max {
		k++
	}
	return k
}

// runs calls fn once per request that fetches the spans idx (ascending
// indices): consecutive indices are grouped by Run within max compressed
// bytes, and a gap between indices always ends a request.
func (t Table) runs(idx []int, max int64, fn func(first, last int)) {
	for len(idx) > 0 {
		n := 1 // the consecutive prefix of idx
		for n < len(idx) && idx[n] == idx[n-1]+1 {
			n++
		}
		last := t.Run(idx[0], idx[n-1], max, CompressedBytes)
		fn(idx[0], last)
		idx = idx[last-idx[0]+1:]
	}
}
