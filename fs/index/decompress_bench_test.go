package index

import (
	"archive/tar"
	"context"
	"fmt"
	"testing"

	"github.com/awslabs/soci-snapshotter/ztoc/compression"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck/tarchecktest"
)

// BenchmarkSpanDecompress inflates every span of a real gzip layer from its
// zTOC checkpoint, as a span fetch does; MB/s is uncompressed output.
func BenchmarkSpanDecompress(b *testing.B) {
	for _, spanSize := range []int64{1 << 20, 4 << 20} {
		b.Run(fmt.Sprintf("span=%dMiB", spanSize>>20), func(b *testing.B) {
			tl := newTestLayer(b, 32<<20, spanSize)
			l, err := ParseZTOC(tl.ztocData, Limits{})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			spans := l.Spans.Spans
			b.SetBytes(l.Spans.UncompressedSize / int64(len(spans)))
			i := 0
			for b.Loop() {
				s := spans[i%len(spans)]
				if _, err := l.Decompress(tl.blob[s.CompressedStart:s.CompressedEnd], i%len(spans)); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkOpenZTOC100k parses and converts the zTOC of a layer with
// 100,000 entries and builds its tree: the CPU work of mounting it.
func BenchmarkOpenZTOC100k(b *testing.B) {
	const n = 100_000
	var es []tarEntry
	body := []byte("0123456789abcdef")
	for d := 0; len(es) < n; d++ {
		dir := fmt.Sprintf("usr/lib/pkg%04d/", d)
		es = append(es, tarEntry{hdr: tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: testTime}})
		for f := 0; f < 99 && len(es) < n; f++ {
			data := body[:f%len(body)]
			es = append(es, tarEntry{hdr: tar.Header{Name: fmt.Sprintf("%sf%03d.py", dir, f), Typeflag: tar.TypeReg, Mode: 0o644,
				ModTime: testTime, Size: int64(len(data))}, data: data})
		}
	}
	blob := gzipMembers(b, buildTar(b, es))
	_, data := tarchecktest.BuildZTOC(b, blob, 4<<20, compression.Gzip)
	b.Logf("zTOC of %d entries: %d bytes (layer %d bytes)", n, len(data), len(blob))
	b.ReportAllocs()
	for b.Loop() {
		l, err := ParseZTOC(data, Limits{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := layer.NewRoot(l.TOC, nopReader{}, layer.Options{}); err != nil {
			b.Fatal(err)
		}
		l.Close()
	}
}

type nopReader struct{}

func (nopReader) FetchAt(_ context.Context, p []byte, _ int64) (int, error) { return len(p), nil }
