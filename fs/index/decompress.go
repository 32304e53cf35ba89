package index

import (
	"errors"
	"fmt"
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

	gzip    bool
	bits    []uint8 // gzip: bits of span i's first byte that belong to the span
	mu      sync.RWMutex
	closed  bool
	windows windows // gzip checkpoint windows; nil for tar layers and after Close
}

// newLayer builds a Layer from a zTOC that convert has validated. Its gzip
// checkpoint windows are read from z.Checkpoints, which it keeps (no copy).
func newLayer(z *ztoc.Ztoc, c *converted) (*Layer, error) {
	l := &Layer{TOC: c.toc, Spans: c.table, SpanSize: c.spanSize}
	if z.CompressionAlgorithm != compression.Gzip {
		return l, nil
	}
	w, err := newMemWindows(z.Checkpoints, len(c.table.Spans))
	if err != nil {
		return nil, fmt.Errorf("load gzip checkpoints: %w", err)
	}
	l.gzip, l.bits, l.windows = true, c.bits, w
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

// inflate inflates span i from its checkpoint's window with zlib.
func (l *Layer) inflate(compressed []byte, s span.Span, i int) ([]byte, error) {
	win, err := l.windows.window(i, s)
	if err != nil {
		return nil, fmt.Errorf("decompress span %d: %w", i, err)
	}
	out := make([]byte, s.UncompressedEnd-s.UncompressedStart)
	if err := inflateSpan(compressed, l.bits[i], win, out); err != nil {
		return nil, fmt.Errorf("decompress span %d: %w", i, err)
	}
	return out, nil
}

// Close releases the checkpoint windows. Decompress fails after Close.
func (l *Layer) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	var err error
	if l.windows != nil {
		err = l.windows.close()
		l.windows = nil
	}
	return err
}
