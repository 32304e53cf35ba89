// Package tarchecktest builds real layers with their zTOCs for tests: of the
// tar cross-check (fs/tarcheck, fs/background) and of zTOC conversion
// (fs/index).
package tarchecktest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
)

// Entry is one tar entry and its data.
type Entry struct {
	Header tar.Header
	Data   []byte
}

// Time is the modification time of the entries.
var Time = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// Entries covers every entry type a zTOC holds, the layer root, special mode
// bits, xattrs, odd names and files from empty to bigSize bytes.
func Entries(bigSize int) []Entry {
	rng := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, bigSize)
	for i := range big {
		if i%4096 >= 1024 {
			big[i] = byte(rng.Uint32())
		}
	}
	small := bytes.Repeat([]byte("0123456789"), 10)
	ent := func(name string, typ byte, mode int64, data []byte) Entry {
		return Entry{Header: tar.Header{
			Name: name, Typeflag: typ, Mode: mode, Uid: 1000, Gid: 1001, ModTime: Time,
			Size: int64(len(data)), Format: tar.FormatPAX,
		}, Data: data}
	}
	es := []Entry{
		ent("./", tar.TypeDir, 0o755, nil),
		ent("a/", tar.TypeDir, 0o2755, nil),
		ent("a/empty", tar.TypeReg, 0o644, []byte{}),
		ent("a/small", tar.TypeReg, 0o640, small),
		ent("a/big", tar.TypeReg, 0o600, big),
		ent("a/link", tar.TypeSymlink, 0o777, nil),
		ent("a/hard", tar.TypeLink, 0o640, nil),
		ent("a/fifo", tar.TypeFifo, 0o600, nil),
		ent("dev/", tar.TypeDir, 0o755, nil),
		ent("dev/null", tar.TypeChar, 0o666, nil),
		ent("dev/sda", tar.TypeBlock, 0o660, nil),
		ent("a/.wh.gone", tar.TypeReg, 0, []byte{}),
		ent("./b/setuid", tar.TypeReg, 0o4755, small[:7]),
		ent("tmp/", tar.TypeDir, 0o1777, nil),
		ent("x/xattrs", tar.TypeReg, 0o644, small[:5]),
		ent("z/last", tar.TypeReg, 0o644, small[:50]),
	}
	es[5].Header.Linkname, es[6].Header.Linkname = "small", "a/small"
	es[9].Header.Devmajor, es[9].Header.Devminor = 1, 3
	es[10].Header.Devmajor, es[10].Header.Devminor = 8, 1
	es[14].Header.PAXRecords = map[string]string{"SCHILY.xattr.user.foo": "bar", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
	return es
}

// Tar writes es as a tar stream.
func Tar(t testing.TB, es []Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := range es {
		h := es[i].Header
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if _, err := tw.Write(es[i].Data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Gzip compresses b.
func Gzip(t testing.TB, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// ZTOC builds blob's zTOC with soci's builder (algorithm compression.Gzip
// or compression.Uncompressed) and serializes it.
func ZTOC(t testing.TB, blob []byte, spanSize int64, algorithm string) []byte {
	t.Helper()
	_, data := BuildZTOC(t, blob, spanSize, algorithm)
	return data
}

// BuildZTOC is ZTOC that also returns the zTOC as soci's builder made it.
func BuildZTOC(t testing.TB, blob []byte, spanSize int64, algorithm string) (*ztoc.Ztoc, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "layer")
	if err := os.WriteFile(path, blob, 0o600); err != nil {
		t.Fatal(err)
	}
	z, err := ztoc.NewBuilder("test").BuildZtoc(path, spanSize, ztoc.WithCompression(algorithm))
	if err != nil {
		t.Fatalf("build zTOC: %v", err)
	}
	r, _, err := ztoc.Marshal(z)
	if err != nil {
		t.Fatalf("marshal zTOC: %v", err)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return z, data
}

// Layer is a real gzip layer: its tar stream, its blob and its zTOC.
type Layer struct {
	Tar, Blob, ZTOC []byte
}

// NewLayer builds a gzip layer of Entries(bigSize) with spans of spanSize.
func NewLayer(t testing.TB, bigSize int, spanSize int64) Layer {
	t.Helper()
	tb := Tar(t, Entries(bigSize))
	blob := Gzip(t, tb)
	return Layer{Tar: tb, Blob: blob, ZTOC: ZTOC(t, blob, spanSize, compression.Gzip)}
}
