package index

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/span"
)

var _ span.Decompressor = (*Layer)(nil)

// ErrClosed is wrapped by Decompress errors after Close.
var ErrClosed = errors.New("layer closed")

// Layer is one layer's zTOC in our types. It decompresses its spans and is
// safe for concurrent use.
type Layer struct {
	TOC           layer.TOC
	Spans         span.Table
	DisableXattrs bool  // the zTOC descriptor's com.amazon.soci.disable-xattrs is "true"
	SpanSize      int64 // the span size the zTOC was built with

	gzip     bool
	nextBits []uint8 // gzip: bits of the block after span i in its last byte
	mu       sync.RWMutex
	closed   bool
	zinfo    compression.Zinfo // gzip checkpoints (C memory); nil for tar layers and after Close
	cleanup  runtime.Cleanup
}

// newLayer builds a Layer from a zTOC that convert has validated.
func newLayer(z *ztoc.Ztoc, c *converted) (*Layer, error) {
	l := &Layer{TOC: c.toc, Spans: c.table, SpanSize: c.spanSize, nextBits: c.nextBits}
	if z.CompressionAlgorithm != compression.Gzip {
		return l, nil
	}
	// The blob's length and count were checked by convert, so the C
	// decoder only copies what is there.
	zi, err := compression.NewZinfo(compression.Gzip, z.Checkpoints)
	if err != nil {
		return nil, fmt.Errorf("load gzip checkpoints: %w", err)
	}
	if int(zi.MaxSpanID())+1 != len(c.table.Spans) {
		zi.Close()
		return nil, fmt.Errorf("load gzip checkpoints: %d spans, want %d", zi.MaxSpanID()+1, len(c.table.Spans))
	}
	l.gzip, l.zinfo = true, zi
	count, spanSize := len(c.table.Spans), c.spanSize
	l.cleanup = runtime.AddCleanup(l, func(zi compression.Zinfo) { freeZinfo(zi, count, spanSize) }, zi)
	return l, nil
}

// Decompress returns the uncompressed bytes of span i from exactly its
// compressed bytes (blob[CompressedStart:CompressedEnd]). The caller should
// have verified them against the span's digest. It implements
// span.Decompressor.
func (l *Layer) Decompress(compressed []byte, i int) ([]byte, error) {
	if i < 0 || i >= len(l.Spans.Spans) {
		return nil, fmt.Errorf("decompress span %d: out of range [0, %d)", i, len(l.Spans.Spans))
	}
	s := l.Spans.Spans[i]
	if int64(len(compressed)) != s.CompressedEnd-s.CompressedStart {
		return nil, fmt.Errorf("decompress span %d: got %d compressed bytes, want %d", i, len(compressed), s.CompressedEnd-s.CompressedStart)
	}
	n := s.UncompressedEnd - s.UncompressedStart
	if n == 0 {
		return []byte{}, nil
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, fmt.Errorf("decompress span %d: %w", i, ErrClosed)
	}
	if !l.gzip {
		return append([]byte(nil), compressed[:n]...), nil // a tar layer: spans are stored as is
	}
	return l.inflate(compressed, s, i)
}

// inflate runs soci's C inflate on a copy of the span's bytes followed by
// the padding pad.go describes.
func (l *Layer) inflate(compressed []byte, s span.Span, i int) ([]byte, error) {
	n := s.UncompressedEnd - s.UncompressedStart
	var stop []byte
	if i+1 < len(l.Spans.Spans) {
		stop = stopper(compressed[len(compressed)-1], l.nextBits[i])
	}
	used := len(compressed) + len(stop)
	buf, free, err := padBuffer(used + 2*int(n) + padSlack)
	if err != nil {
		return nil, fmt.Errorf("decompress span %d: %w", i, err)
	}
	defer free()
	copy(buf, compressed)
	copy(buf[len(compressed):], stop)
	out, err := l.zinfo.ExtractDataFromBuffer(buf, compression.Offset(n),
		compression.Offset(s.UncompressedStart), compression.SpanID(i))
	if err != nil {
		return nil, fmt.Errorf("decompress span %d: %w", i, err)
	}
	if int64(len(out)) != n {
		return nil, fmt.Errorf("decompress span %d: got %d bytes, want %d", i, len(out), n)
	}
	return out, nil
}

// Close frees the C checkpoint memory. Decompress fails after Close.
func (l *Layer) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.zinfo != nil {
		l.cleanup.Stop()
		freeZinfo(l.zinfo, len(l.Spans.Spans), l.SpanSize)
		l.zinfo = nil
	}
	return nil
}
