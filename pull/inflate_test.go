package pull

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck/tarchecktest"
)

// ztocLayer is a real zTOC's spans; alter (>= 0) flips a byte of that
// span's output, as a zTOC with lying checkpoints would; inflates counts
// the spans inflated.
type ztocLayer struct {
	*index.Layer
	alter    int
	panicAt  int // a span whose inflate panics; 0 is none (span 0 is never picked)
	inflates *atomic.Int64
	closed   *atomic.Bool
}

func (z ztocLayer) Table() span.Table { return z.Spans }

func (z ztocLayer) Decompress(compressed []byte, i int) ([]byte, error) {
	z.inflates.Add(1)
	if z.panicAt > 0 && i == z.panicAt {
		panic("hostile span")
	}
	out, err := z.Layer.Decompress(compressed, i)
	if err == nil && i == z.alter {
		out = slices.Clone(out)
		out[len(out)/2] ^= 1
	}
	return out, err
}

func (z ztocLayer) Close() error { z.closed.Store(true); return nil }

// zLayer is a gzip layer of plain files, its tar stream and its zTOC.
type zLayer struct {
	Tar, Blob []byte
	files     map[string][]byte
}

// newZTOCLayer is a gzip layer of about 640 KiB of tar with 64 KiB spans.
func newZTOCLayer(t *testing.T, alter int) (zLayer, ztocLayer) {
	t.Helper()
	l := zLayer{files: map[string][]byte{}}
	rng := rand.New(rand.NewPCG(3, 4))
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for i := range 20 {
		body := make([]byte, 32<<10)
		for k := range body {
			body[k] = "abcdefgh\n"[rng.IntN(9)]
		}
		name := fmt.Sprintf("d/f%02d", i)
		l.files[name] = body
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	tw.Close()
	l.Tar, l.Blob = raw.Bytes(), tarchecktest.Gzip(t, raw.Bytes())
	z, err := index.ParseZTOC(tarchecktest.ZTOC(t, l.Blob, 64<<10, compression.Gzip), index.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	if len(z.Spans.Spans) < 4 {
		t.Fatalf("%d spans", len(z.Spans.Spans))
	}
	return l, ztocLayer{Layer: z, alter: alter, inflates: &atomic.Int64{}, closed: &atomic.Bool{}}
}

func TestInflateSpans(t *testing.T) {
	l, z := newZTOCLayer(t, -1)
	if !parallelizable(z, int64(len(l.Blob))) {
		t.Fatal("a real zTOC's layer is not parallelizable")
	}
	for _, workers := range []int{1, 2, 4} {
		t.Run(fmt.Sprint(workers), func(t *testing.T) {
			var out bytes.Buffer
			src := &countingReader{r: bytes.NewReader(l.Blob)}
			if err := inflateSpans(context.Background(), src, z, workers, &out); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), l.Tar) {
				t.Errorf("output of %d bytes differs from the tar stream of %d", out.Len(), len(l.Tar))
			}
			if src.n != int64(len(l.Blob)) || !src.eof {
				t.Errorf("read %d of %d bytes, EOF seen: %v", src.n, len(l.Blob), src.eof)
			}
		})
	}
}

// countingReader counts what is read and whether EOF was reached.
type countingReader struct {
	r   io.Reader
	n   int64
	eof bool
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.eof = c.eof || err == io.EOF
	return n, err
}

// TestInflateSpansLyingCheckpoint: output that is not the layer's is
// caught by the gzip trailer.
func TestInflateSpansLyingCheckpoint(t *testing.T) {
	l, z := newZTOCLayer(t, 3)
	err := inflateSpans(context.Background(), bytes.NewReader(l.Blob), z, 2, io.Discard)
	if !errors.Is(err, errInflateMismatch) {
		t.Fatalf("got %v, want errInflateMismatch", err)
	}
}

// TestInflateSpansSourceError: a read error of the blob (a digest check at
// its end, say) is the result.
func TestInflateSpansSourceError(t *testing.T) {
	l, z := newZTOCLayer(t, -1)
	boom := errors.New("blob digest mismatch")
	src := io.MultiReader(bytes.NewReader(l.Blob), errReader{boom})
	if err := inflateSpans(context.Background(), src, z, 2, io.Discard); !errors.Is(err, boom) {
		t.Fatalf("got %v, want %v", err, boom)
	}
	short := bytes.NewReader(l.Blob[:len(l.Blob)/2])
	if err := inflateSpans(context.Background(), short, z, 2, io.Discard); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short blob: got %v, want unexpected EOF", err)
	}
}

// TestInflateSpansPanic: a panic inflating a span is an error.
func TestInflateSpansPanic(t *testing.T) {
	l, z := newZTOCLayer(t, -1)
	z.panicAt = 2
	err := inflateSpans(context.Background(), bytes.NewReader(l.Blob), z, 2, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "panic") {
		t.Fatalf("got %v, want an error naming the panic", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestParallelizable(t *testing.T) {
	l, z := newZTOCLayer(t, -1)
	size := int64(len(l.Blob))
	if parallelizable(z, size+1) {
		t.Error("a size other than the blob's is parallelizable")
	}
	spans := func(change func([]span.Span)) SpanLayer {
		tb := z.Spans
		tb.Spans = slices.Clone(tb.Spans)
		change(tb.Spans)
		return tableLayer{tb}
	}
	if !parallelizable(spans(func([]span.Span) {}), size) {
		t.Error("a copy of the table is not parallelizable")
	}
	if parallelizable(spans(func(s []span.Span) { s[2].CompressedStart += 2 }), size) {
		t.Error("spans with a gap are parallelizable")
	}
	if parallelizable(spans(func(s []span.Span) { s[2].CompressedStart = s[1].CompressedStart }), size) {
		t.Error("spans out of order are parallelizable")
	}
	if parallelizable(spans(func(s []span.Span) { s[1].UncompressedEnd = s[1].UncompressedStart + maxParallelSpan + 1 }), size) {
		t.Error("a span too large is parallelizable")
	}
	// The last span must hold the trailer, and no span may be empty:
	// readSpans takes both from the span's bytes.
	if parallelizable(spans(func(s []span.Span) {
		n := len(s) - 1
		s[n].CompressedStart = size - 3
		s[n-1].CompressedEnd = size - 3
	}), size) {
		t.Error("a last span shorter than the gzip trailer is parallelizable")
	}
	if parallelizable(spans(func(s []span.Span) {
		s[1].CompressedEnd = s[1].CompressedStart
		s[2].CompressedStart = s[1].CompressedStart
	}), size) {
		t.Error("an empty span is parallelizable")
	}
}

// tableLayer is a span table alone.
type tableLayer struct{ t span.Table }

func (l tableLayer) Table() span.Table                      { return l.t }
func (l tableLayer) Gzip() bool                             { return true }
func (l tableLayer) Decompress([]byte, int) ([]byte, error) { return nil, errors.New("no data") }
func (l tableLayer) Close() error                           { return nil }

// spanSource serves one layer's zTOC.
type spanSource struct {
	layer digest.Digest
	z     ztocLayer
	opens atomic.Int64
}

func (s *spanSource) Open(_ context.Context, _ string, _ digest.Digest, desc ocispec.Descriptor) (SpanLayer, error) {
	s.opens.Add(1)
	if desc.Digest != s.layer {
		return nil, errors.New("no zTOC")
	}
	return s.z, nil
}

// TestPullMultiCoreInflate: a layer with a zTOC is unpacked from spans
// inflated in parallel; one whose zTOC lies is unpacked again in one
// stream, and both give the layer's files and diffID.
func TestPullMultiCoreInflate(t *testing.T) {
	for _, alter := range []int{-1, 4} {
		t.Run(fmt.Sprint("alter ", alter), func(t *testing.T) {
			l, z := newZTOCLayer(t, alter)
			desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(l.Blob), Size: int64(len(l.Blob))}
			img := newImage(t, 1)
			img.reg.blobs[desc.Digest] = l.Blob
			img.layers = []ocispec.Descriptor{desc}
			img.diffIDs = []digest.Digest{digest.FromBytes(l.Tar)}
			img.chainIDs = identity.ChainIDs(slices.Clone(img.diffIDs))
			img.setManifest(t)
			src := &spanSource{layer: desc.Digest, z: z}
			p, root := newPullerWith(t, img.reg, func(o *Options) { o.Spans, o.InflateWorkers = src, 2 })
			dir := snapshotDir(t, root, 0)
			if err := p.Pull(context.Background(), dir, "", img.chainIDs[0].String(), nil, img.labels(0)); err != nil {
				t.Fatalf("pull: %v", err)
			}
			n := int64(len(z.Spans.Spans))
			if src.opens.Load() != 1 || z.inflates.Load() != n || !z.closed.Load() {
				t.Errorf("zTOC opened %d times, %d of %d spans inflated, closed %v", src.opens.Load(), z.inflates.Load(), n, z.closed.Load())
			}
			for name, body := range l.files {
				got, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil || !bytes.Equal(got, body) {
					t.Errorf("%s: %v, equal %v", name, err, bytes.Equal(got, body))
				}
			}
			if left := stagingEntries(t, root); len(left) != 0 {
				t.Errorf("staging holds %v", left)
			}
		})
	}
}
