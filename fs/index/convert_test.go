package index

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck/tarchecktest"
)

func TestConvertRealLayers(t *testing.T) {
	const mib = 1 << 20
	gz := func(level, members int) func(testing.TB, []byte) []byte {
		return func(t testing.TB, tb []byte) []byte { return gzipLevel(t, tb, level, members) }
	}
	cases := []struct {
		name     string
		bigSize  int
		spanSize int64
		blob     func(testing.TB, []byte) []byte // nil: an uncompressed tar layer
	}{
		{"gzip 64KiB", 300 << 10, 64 << 10, gz(gzip.DefaultCompression, 1)},
		{"gzip 8KiB", 100 << 10, 8 << 10, gz(gzip.DefaultCompression, 1)}, // checkpoints before 32 KiB
		{"gzip 256KiB", 1 * mib, 256 << 10, gz(gzip.DefaultCompression, 1)},
		{"gzip 1MiB", 3*mib + 500<<10, mib, gz(gzip.DefaultCompression, 1)},
		{"gzip stored blocks", 400 << 10, 64 << 10, gz(gzip.NoCompression, 1)},
		{"gzip fastest", 400 << 10, 64 << 10, gz(gzip.BestSpeed, 1)},
		{"gzip best", 400 << 10, 64 << 10, gz(gzip.BestCompression, 1)},
		{"gzip huffman only", 400 << 10, 64 << 10, gz(gzip.HuffmanOnly, 1)},
		{"gzip 3 members", 400 << 10, 64 << 10, gz(gzip.DefaultCompression, 3)},
		{"gzip 7 members", 700 << 10, 64 << 10, gz(gzip.BestSpeed, 7)},
		{"GNU gzip", 700 << 10, 64 << 10, gnuGzip},
		{"tar 64KiB", 300 << 10, 64 << 10, nil},
		{"tar 1MiB", 3*mib + 500<<10, mib, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			es := testEntries(tc.bigSize)
			tb := buildTar(t, es)
			blob, algorithm := tb, compression.Uncompressed
			if tc.blob != nil {
				blob, algorithm = tc.blob(t, tb), compression.Gzip
			}
			_, data := tarchecktest.BuildZTOC(t, blob, tc.spanSize, algorithm)
			l, err := ParseZTOC(data, Limits{})
			if err != nil {
				t.Fatalf("ParseZTOC: %v", err)
			}
			defer l.Close()
			if l.SpanSize != tc.spanSize {
				t.Errorf("SpanSize = %d, want %d", l.SpanSize, tc.spanSize)
			}
			if n := len(l.Spans.Spans); int64(tc.bigSize)/tc.spanSize >= 3 && n < 4 {
				t.Errorf("%d spans, want more than 3", n)
			}
			checkEntries(t, l.TOC, es, tb)
			checkSpans(t, l, blob, tb)
		})
	}
}

// checkEntries compares the TOC with what was written to the tar.
func checkEntries(t *testing.T, toc layer.TOC, es []tarEntry, tarBytes []byte) {
	t.Helper()
	var want []tarEntry
	for _, e := range es {
		if e.want != nil {
			want = append(want, e)
		}
	}
	if len(toc.Entries) != len(want) {
		t.Fatalf("%d entries, want %d", len(toc.Entries), len(want))
	}
	for i, got := range toc.Entries {
		w := *want[i].want
		if got.Type == layer.TypeReg {
			if d := tarBytes[got.Offset : got.Offset+got.Size]; !bytes.Equal(d, want[i].data) {
				t.Errorf("%s: data at [%d, +%d) differs from the file", got.Name, got.Offset, got.Size)
			}
			w.Offset = got.Offset
		}
		if !got.ModTime.Equal(w.ModTime) {
			t.Errorf("%s: mtime %v, want %v", got.Name, got.ModTime, w.ModTime)
		}
		got.ModTime, w.ModTime = time.Time{}, time.Time{}
		if !maps.Equal(got.Xattrs, w.Xattrs) {
			t.Errorf("%s: xattrs %q, want %q", got.Name, got.Xattrs, w.Xattrs)
		}
		got.Xattrs, w.Xattrs = nil, nil
		if fmt.Sprint(got) != fmt.Sprint(w) {
			t.Errorf("entry %d:\n got %+v\nwant %+v", i, got, w)
		}
	}
}

// checkSpans decompresses every span from its compressed bytes and checks
// digests and contents.
func checkSpans(t *testing.T, l *Layer, blob, tarBytes []byte) {
	t.Helper()
	tbl := l.Spans
	if err := tbl.Validate(); err != nil {
		t.Fatal(err)
	}
	if tbl.CompressedSize != int64(len(blob)) {
		t.Errorf("CompressedSize %d, want %d", tbl.CompressedSize, len(blob))
	}
	for i, s := range tbl.Spans {
		c := blob[s.CompressedStart:s.CompressedEnd]
		if got := digest.FromBytes(c); got != s.Digest {
			t.Errorf("span %d: digest %s, compressed bytes have %s", i, s.Digest, got)
		}
		// A slice with spare capacity and one without: both must work.
		for _, in := range [][]byte{c, bytes.Clone(c)} {
			out, err := l.Decompress(in, i)
			if err != nil {
				t.Fatalf("Decompress span %d: %v", i, err)
			}
			want := tarBytes[s.UncompressedStart:min(s.UncompressedEnd, int64(len(tarBytes)))]
			if int64(len(out)) != s.UncompressedEnd-s.UncompressedStart || !bytes.Equal(out[:len(want)], want) {
				t.Fatalf("span %d [%d, %d): decompressed bytes differ from the tar stream", i, s.UncompressedStart, s.UncompressedEnd)
			}
		}
		checkWindow(t, l, i, tarBytes)
	}
}

// checkWindow checks the fact the span manager's window check relies on:
// the window of a gzip span's checkpoint is the last 32 KiB of the tar
// stream before it, zero-filled in front when fewer bytes precede it.
func checkWindow(t *testing.T, l *Layer, i int, tarBytes []byte) {
	t.Helper()
	s := l.Spans.Spans[i]
	if !l.gzip {
		if s.HasWindow {
			t.Errorf("tar span %d has a window", i)
		}
		return
	}
	want := make([]byte, span.WindowSize)
	need := min(s.UncompressedStart, span.WindowSize)
	copy(want[span.WindowSize-need:], tarBytes[s.UncompressedStart-need:s.UncompressedStart])
	if !s.HasWindow || s.Window != sha256.Sum256(want) {
		t.Errorf("span %d (start %d): window digest is not that of the 32 KiB before it", i, s.UncompressedStart)
	}
}

func TestDecompressErrors(t *testing.T) {
	tl := newTestLayer(t, 200<<10, 64<<10)
	l, err := ParseZTOC(tl.ztocData, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	s := l.Spans.Spans[0]
	c := tl.blob[s.CompressedStart:s.CompressedEnd]
	if _, err := l.Decompress(c[1:], 0); err == nil {
		t.Error("short input: no error")
	}
	if _, err := l.Decompress(c, len(l.Spans.Spans)); err == nil {
		t.Error("span out of range: no error")
	}
	if _, err := l.Decompress(c, -1); err == nil {
		t.Error("negative span: no error")
	}
	l.Close()
	l.Close()
	if _, err := l.Decompress(c, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
}

// TestDecompressLyingZTOC gives the C inflate a span whose zTOC claims more
// output than its compressed bytes hold; unpadded, soci's C code would spin
// forever.
func TestDecompressLyingZTOC(t *testing.T) {
	tl := newTestLayer(t, 400<<10, 64<<10)
	z, err := decodeZTOC(tl.ztocData, Limits{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	if z.MaxSpanID < 2 {
		t.Fatalf("want at least 3 spans, have %d", z.MaxSpanID+1)
	}
	cp := func(i int) []byte { return z.Checkpoints[blobHeaderSize+i*checkpointSize:] }
	out1, out2 := binary.LittleEndian.Uint64(cp(1)[8:]), binary.LittleEndian.Uint64(cp(2)[8:])
	binary.LittleEndian.PutUint64(cp(1)[8:], out1+(out2-out1)/2)
	c, err := convert(z)
	if err != nil {
		t.Fatal(err)
	}
	l, err := newLayer(z, c)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := l.Spans.Spans[0]
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = l.Decompress(tl.blob[s.CompressedStart:s.CompressedEnd], 0)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Decompress of a span with a lying size did not return")
	}
}

// TestConvertRejects mutates a real zTOC in ways an attacker could.
func TestConvertRejects(t *testing.T) {
	tl := newTestLayer(t, 300<<10, 64<<10)
	file := func(name string) func(z *ztoc.Ztoc) *ztoc.FileMetadata {
		return func(z *ztoc.Ztoc) *ztoc.FileMetadata {
			for i := range z.FileMetadata {
				if z.FileMetadata[i].Name == name {
					return &z.FileMetadata[i]
				}
			}
			panic(name)
		}
	}
	small, hard, null := file("a/small"), file("a/hard"), file("dev/null")
	cases := map[string]func(z *ztoc.Ztoc){
		"max span id":        func(z *ztoc.Ztoc) { z.MaxSpanID++ },
		"negative span id":   func(z *ztoc.Ztoc) { z.MaxSpanID = -1 },
		"digest missing":     func(z *ztoc.Ztoc) { z.SpanDigests = z.SpanDigests[1:]; z.MaxSpanID-- },
		"bad span digest":    func(z *ztoc.Ztoc) { z.SpanDigests[1] = "sha256:nothex" },
		"version":            func(z *ztoc.Ztoc) { z.Version = "1.0" },
		"compression":        func(z *ztoc.Ztoc) { z.CompressionAlgorithm = "zstd" },
		"blob size":          func(z *ztoc.Ztoc) { z.CompressedArchiveSize = 0 },
		"blob too small":     func(z *ztoc.Ztoc) { z.CompressedArchiveSize = 100 },
		"stream too small":   func(z *ztoc.Ztoc) { z.UncompressedArchiveSize = 1000 },
		"checkpoints short":  func(z *ztoc.Ztoc) { z.Checkpoints = z.Checkpoints[:len(z.Checkpoints)-1] },
		"checkpoints count":  func(z *ztoc.Ztoc) { binary.LittleEndian.PutUint32(z.Checkpoints, 1<<30) },
		"checkpoint order":   func(z *ztoc.Ztoc) { binary.LittleEndian.PutUint64(z.Checkpoints[blobHeaderSize+checkpointSize:], 1) },
		"checkpoint bits":    func(z *ztoc.Ztoc) { z.Checkpoints[blobHeaderSize+16] = 9 },
		"first offset":       func(z *ztoc.Ztoc) { binary.LittleEndian.PutUint64(z.Checkpoints[blobHeaderSize+8:], 5) },
		"data past end":      func(z *ztoc.Ztoc) { small(z).UncompressedOffset = z.UncompressedArchiveSize - 10 },
		"negative size":      func(z *ztoc.Ztoc) { small(z).UncompressedSize = -1 },
		"name escapes":       func(z *ztoc.Ztoc) { small(z).Name = "../etc/passwd" },
		"name escapes later": func(z *ztoc.Ztoc) { small(z).Name = "a/../../etc/passwd" },
		"name NUL":           func(z *ztoc.Ztoc) { small(z).Name = "a/sm\x00all" },
		"empty name":         func(z *ztoc.Ztoc) { small(z).Name = "" },
		"root file":          func(z *ztoc.Ztoc) { small(z).Name = "./" },
		"type":               func(z *ztoc.Ztoc) { small(z).Type = "sparse" },
		"hardlink escapes":   func(z *ztoc.Ztoc) { hard(z).Linkname = "../../x" },
		"hardlink empty":     func(z *ztoc.Ztoc) { hard(z).Linkname = "" },
		"device":             func(z *ztoc.Ztoc) { null(z).Devmajor = -1 },
		"uid":                func(z *ztoc.Ztoc) { small(z).UID = -1 },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			z, err := decodeZTOC(tl.ztocData, Limits{}.withDefaults())
			if err != nil {
				t.Fatal(err)
			}
			mutate(z)
			if _, _, err := Convert(z); err == nil {
				t.Fatal("Convert accepted it")
			}
		})
	}
	if _, _, err := Convert(nil); err == nil {
		t.Error("Convert(nil) accepted")
	}
}

func TestCleanName(t *testing.T) {
	ok := map[string]string{
		"a": "a", "./a": "a", "/a": "a", "a/": "a", "//a//b/": "a/b", "./": "", "/": "", ".": "",
		"a/../b": "b", "a/./b": "a/b", ".wh..wh..opq": ".wh..wh..opq",
	}
	for in, want := range ok {
		if got, err := cleanName(in); err != nil || got != want {
			t.Errorf("cleanName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "..", "../a", "/../a", "a/../..", "./../a", "a\x00b"} {
		if got, err := cleanName(in); err == nil {
			t.Errorf("cleanName(%q) = %q, want an error", in, got)
		}
	}
}

func TestParseZTOCGarbage(t *testing.T) {
	tl := newTestLayer(t, 100<<10, 64<<10)
	inputs := map[string][]byte{
		"empty":     nil,
		"short":     []byte("abc"),
		"text":      []byte(strings.Repeat("not a flatbuffer ", 100)),
		"truncated": tl.ztocData[:len(tl.ztocData)/2],
	}
	for name, in := range inputs {
		if _, err := ParseZTOC(in, Limits{}); err == nil {
			t.Errorf("%s: ParseZTOC accepted it", name)
		}
	}
}
