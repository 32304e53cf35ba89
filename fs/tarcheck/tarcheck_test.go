package tarcheck

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck/tarchecktest"
)

// honest returns a real layer and the entries fs/index converts from the
// zTOC soci's builder made for it.
func honest(t *testing.T) (tarchecktest.Layer, []layer.Entry) {
	t.Helper()
	l := tarchecktest.NewLayer(t, 300<<10, 64<<10)
	z, err := index.ParseZTOC(l.ZTOC, index.Limits{})
	if err != nil {
		t.Fatalf("parse zTOC: %v", err)
	}
	t.Cleanup(func() { z.Close() })
	return l, z.TOC.Entries
}

func find(t *testing.T, es []layer.Entry, name string) int {
	t.Helper()
	for i := range es {
		if es[i].Name == name {
			return i
		}
	}
	t.Fatalf("no entry %q", name)
	return -1
}

func TestHonestLayerPasses(t *testing.T) {
	l, es := honest(t)
	if len(es) != len(tarchecktest.Entries(1))-1 { // the root is dropped
		t.Fatalf("%d entries", len(es))
	}
	zr, err := gzip.NewReader(bytes.NewReader(l.Blob))
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(zr, es); err != nil {
		t.Fatalf("honest gzip layer: %v", err)
	}
	if err := Check(bytes.NewReader(l.Tar), es); err != nil {
		t.Fatalf("honest tar stream: %v", err)
	}
}

// TestLiesDetected: each kind of lie in the file table is reported as a
// Mismatch naming the entry and the field.
func TestLiesDetected(t *testing.T) {
	l, honestEntries := honest(t)
	cases := []struct {
		name, entry, field string
		lie                func(es []layer.Entry, i int) []layer.Entry
	}{
		{"name", "a/small", FieldName, func(es []layer.Entry, i int) []layer.Entry { es[i].Name = "a/smal1"; return es }},
		{"size", "a/big", FieldSize, func(es []layer.Entry, i int) []layer.Entry { es[i].Size++; return es }},
		{"offset", "a/small", FieldOffset, func(es []layer.Entry, i int) []layer.Entry { es[i].Offset += 512; return es }},
		{"mode", "b/setuid", FieldMode, func(es []layer.Entry, i int) []layer.Entry { es[i].Mode = 0o755; return es }},
		{"setuid added", "a/small", FieldMode, func(es []layer.Entry, i int) []layer.Entry { es[i].Mode |= 0o4000; return es }},
		{"uid", "a/small", FieldUID, func(es []layer.Entry, i int) []layer.Entry { es[i].UID = 0; return es }},
		{"gid", "a/big", FieldGID, func(es []layer.Entry, i int) []layer.Entry { es[i].GID = 0; return es }},
		{"mtime", "a/big", FieldModTime, func(es []layer.Entry, i int) []layer.Entry { es[i].ModTime = es[i].ModTime.Add(time.Second); return es }},
		{"symlink target", "a/link", FieldLinkname, func(es []layer.Entry, i int) []layer.Entry { es[i].Linkname = "/etc/shadow"; return es }},
		{"hardlink target", "a/hard", FieldLinkname, func(es []layer.Entry, i int) []layer.Entry { es[i].Linkname = "a/big"; return es }},
		{"devmajor", "dev/null", FieldDevmajor, func(es []layer.Entry, i int) []layer.Entry { es[i].Devmajor = 8; return es }},
		{"devminor", "dev/sda", FieldDevminor, func(es []layer.Entry, i int) []layer.Entry { es[i].Devminor = 0; return es }},
		{"type", "a/fifo", FieldType, func(es []layer.Entry, i int) []layer.Entry { es[i].Type = layer.TypeChar; return es }},
		{"xattr added", "a/small", FieldXattrs, func(es []layer.Entry, i int) []layer.Entry {
			es[i].Xattrs = map[string]string{"security.capability": "x"}
			return es
		}},
		{"xattr changed", "x/xattrs", FieldXattrs, func(es []layer.Entry, i int) []layer.Entry {
			es[i].Xattrs = maps.Clone(es[i].Xattrs)
			es[i].Xattrs["user.foo"] = "baz"
			return es
		}},
		{"whiteout hidden (missing entry)", "a/.wh.gone", FieldMissing, func(es []layer.Entry, i int) []layer.Entry { return slices.Delete(es, i, i+1) }},
		{"last entry missing", "z/last", FieldMissing, func(es []layer.Entry, i int) []layer.Entry { return es[:i] }},
		{"extra entry", "a/injected", FieldExtra, func(es []layer.Entry, i int) []layer.Entry {
			return slices.Insert(es, i, layer.Entry{Name: "a/injected", Type: layer.TypeReg, Mode: 0o4755})
		}},
		{"extra entry at the end", "zz", FieldExtra, func(es []layer.Entry, i int) []layer.Entry {
			return append(es, layer.Entry{Name: "zz", Type: layer.TypeDir})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			es := slices.Clone(honestEntries)
			var i int
			switch c.field {
			case FieldExtra:
				i = find(t, es, "a/empty")
				if c.entry == "zz" {
					i = len(es)
				}
			default:
				i = find(t, es, c.entry)
			}
			es = c.lie(es, i)
			err := Check(bytes.NewReader(l.Tar), es)
			var m *Mismatch
			if !errors.As(err, &m) || !errors.Is(err, ErrMismatch) {
				t.Fatalf("want a Mismatch, got %v", err)
			}
			want := c.entry
			if c.field == FieldName {
				want = es[i].Name // the table's name is reported
			}
			if m.Field != c.field || m.Name != want || m.Index != i {
				t.Errorf("got %v (index %d field %q name %q), want index %d field %q name %q", m, m.Index, m.Field, m.Name, i, c.field, want)
			}
		})
	}
}

func TestNotATar(t *testing.T) {
	_, es := honest(t)
	junk := bytes.Repeat([]byte("not a tar "), 100)
	var m *Mismatch
	if err := Check(bytes.NewReader(junk), es); !errors.As(err, &m) || m.Field != FieldStream || m.Index != 0 {
		t.Fatalf("junk: got %v", err)
	}
	// A truncated archive: the stream ends inside the big file.
	l, _ := honest(t)
	if err := Check(bytes.NewReader(l.Tar[:20<<10]), es); err == nil {
		t.Fatal("truncated archive passed")
	}
}

// failingReader fails after n bytes.
type failingReader struct {
	r io.Reader
	n int
}

var errBroken = errors.New("broken pipe")

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errBroken
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

// TestReaderErrorIsNotMismatch: a reader that fails says nothing about the
// layer, so it is reported as its own error.
func TestReaderErrorIsNotMismatch(t *testing.T) {
	l, es := honest(t)
	for _, n := range []int{0, 100, 1024, 100 << 10} {
		err := Check(&failingReader{r: bytes.NewReader(l.Tar), n: n}, es)
		if !errors.Is(err, errBroken) || errors.Is(err, ErrMismatch) {
			t.Errorf("after %d bytes: got %v", n, err)
		}
	}
}
