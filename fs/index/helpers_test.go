package index

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"math/rand"
	"os/exec"
	"testing"
	"time"

	"github.com/awslabs/soci-snapshotter/ztoc/compression"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck/tarchecktest"
)

// tarEntry is one entry written to a test layer and what Convert should
// make of it (nil want: dropped, as the layer root is).
type tarEntry struct {
	hdr  tar.Header
	data []byte
	want *layer.Entry
}

var testTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// pseudoRandom is incompressible-ish data, so that files span several spans
// also after compression.
func pseudoRandom(seed int64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewSource(seed))
	for i := range b {
		if i%4096 < 1024 {
			b[i] = byte('a' + i%7) // some compressible runs
			continue
		}
		b[i] = byte(r.Intn(256))
	}
	return b
}

// testEntries covers every entry type soci writes, special mode bits,
// xattrs, whiteouts, odd names and files from empty to several spans.
func testEntries(bigSize int) []tarEntry {
	small := bytes.Repeat([]byte("0123456789"), 10)
	big := pseudoRandom(1, bigSize)
	xa := map[string]string{"SCHILY.xattr.user.foo": "bar", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
	ent := func(name string, typ byte, mode int64, data []byte, want *layer.Entry) tarEntry {
		h := tar.Header{Name: name, Typeflag: typ, Mode: mode, Uid: 1000, Gid: 1001, ModTime: testTime, Size: int64(len(data)), Format: tar.FormatPAX}
		if want != nil {
			want.Mode, want.UID, want.GID, want.ModTime = uint32(mode), 1000, 1001, testTime
		}
		return tarEntry{hdr: h, data: data, want: want}
	}
	es := []tarEntry{
		ent("./", tar.TypeDir, 0o755, nil, nil),
		ent("a/", tar.TypeDir, 0o2755, nil, &layer.Entry{Name: "a", Type: layer.TypeDir}),
		ent("a/empty", tar.TypeReg, 0o644, []byte{}, &layer.Entry{Name: "a/empty", Type: layer.TypeReg}),
		ent("a/small", tar.TypeReg, 0o640, small, &layer.Entry{Name: "a/small", Type: layer.TypeReg, Size: int64(len(small))}),
		ent("a/big", tar.TypeReg, 0o600, big, &layer.Entry{Name: "a/big", Type: layer.TypeReg, Size: int64(len(big))}),
		ent("a/link", tar.TypeSymlink, 0o777, nil, &layer.Entry{Name: "a/link", Type: layer.TypeSymlink, Linkname: "small"}),
		ent("a/hard", tar.TypeLink, 0o640, nil, &layer.Entry{Name: "a/hard", Type: layer.TypeHardlink, Linkname: "a/small"}),
		ent("a/fifo", tar.TypeFifo, 0o600, nil, &layer.Entry{Name: "a/fifo", Type: layer.TypeFifo}),
		ent("dev/", tar.TypeDir, 0o755, nil, &layer.Entry{Name: "dev", Type: layer.TypeDir}),
		ent("dev/null", tar.TypeChar, 0o666, nil, &layer.Entry{Name: "dev/null", Type: layer.TypeChar, Devmajor: 1, Devminor: 3}),
		ent("dev/sda", tar.TypeBlock, 0o660, nil, &layer.Entry{Name: "dev/sda", Type: layer.TypeBlock, Devmajor: 8}),
		ent("a/.wh.gone", tar.TypeReg, 0o000, []byte{}, &layer.Entry{Name: "a/.wh.gone", Type: layer.TypeReg}),
		ent("a/sub/", tar.TypeDir, 0o755, nil, &layer.Entry{Name: "a/sub", Type: layer.TypeDir}),
		ent("a/sub/.wh..wh..opq", tar.TypeReg, 0o000, []byte{}, &layer.Entry{Name: "a/sub/.wh..wh..opq", Type: layer.TypeReg}),
		ent("./b/setuid", tar.TypeReg, 0o4755, small[:7], &layer.Entry{Name: "b/setuid", Type: layer.TypeReg, Size: 7}),
		ent("/abs//file", tar.TypeReg, 0o644, small[:3], &layer.Entry{Name: "abs/file", Type: layer.TypeReg, Size: 3}),
		ent("tmp/", tar.TypeDir, 0o1777, nil, &layer.Entry{Name: "tmp", Type: layer.TypeDir}),
		ent("x/xattrs", tar.TypeReg, 0o644, small[:5], &layer.Entry{Name: "x/xattrs", Type: layer.TypeReg, Size: 5,
			Xattrs: map[string]string{"user.foo": "bar", "security.capability": "\x01\x00\x00\x02"}}),
	}
	es[len(es)-1].hdr.PAXRecords = xa
	es[5].hdr.Linkname, es[6].hdr.Linkname = "small", "a/small"
	es[9].hdr.Devmajor, es[9].hdr.Devminor = 1, 3
	es[10].hdr.Devmajor = 8
	return es
}

// buildTar writes entries as a tar stream.
func buildTar(t testing.TB, es []tarEntry) []byte {
	t.Helper()
	entries := make([]tarchecktest.Entry, len(es))
	for i, e := range es {
		entries[i] = tarchecktest.Entry{Header: e.hdr, Data: e.data}
	}
	return tarchecktest.Tar(t, entries)
}

// gzipMembers compresses tarBytes as one gzip member per part, cutting at
// the given offsets (none: a single member).
func gzipMembers(t testing.TB, tarBytes []byte, cuts ...int) []byte {
	t.Helper()
	var out bytes.Buffer
	prev := 0
	for _, c := range append(cuts, len(tarBytes)) {
		zw := gzip.NewWriter(&out)
		if _, err := zw.Write(tarBytes[prev:c]); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		prev = c
	}
	return out.Bytes()
}

// gzipLevel compresses tarBytes at a compress/gzip level in equal members.
func gzipLevel(t testing.TB, tarBytes []byte, level, members int) []byte {
	t.Helper()
	var out bytes.Buffer
	for i := range members {
		zw, err := gzip.NewWriterLevel(&out, level)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := zw.Write(tarBytes[len(tarBytes)*i/members : len(tarBytes)*(i+1)/members]); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

// gnuGzip compresses with GNU gzip, whose deflate differs from Go's (it
// marks the last data block final, where Go adds an empty final block).
func gnuGzip(t testing.TB, tarBytes []byte) []byte {
	t.Helper()
	path, err := exec.LookPath("gzip")
	if err != nil {
		t.Skip("GNU gzip is not installed")
	}
	cmd := exec.Command(path, "-c", "-9")
	cmd.Stdin = bytes.NewReader(tarBytes)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gzip: %v", err)
	}
	return out
}

// testLayer is a real gzip layer with its zTOC.
type testLayer struct {
	entries  []tarEntry
	tar      []byte
	blob     []byte
	ztocData []byte
}

func newTestLayer(t testing.TB, bigSize int, spanSize int64) testLayer {
	t.Helper()
	es := testEntries(bigSize)
	tb := buildTar(t, es)
	blob := gzipMembers(t, tb)
	_, data := tarchecktest.BuildZTOC(t, blob, spanSize, compression.Gzip)
	return testLayer{entries: es, tar: tb, blob: blob, ztocData: data}
}
