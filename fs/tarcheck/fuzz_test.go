package tarcheck

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"maps"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck/tarchecktest"
)

// FuzzTarCrossCheck: arbitrary tar bytes against an arbitrary file table
// never panic and give nil or a Mismatch; the table an honest builder makes
// of the same bytes always passes; and changing one field of one entry of
// that table is reported at that entry.
func FuzzTarCrossCheck(f *testing.F) {
	small := tarchecktest.Tar(f, tarchecktest.Entries(100))
	f.Add(small, []byte{})
	f.Add(small, []byte{3, 1, 0xa4, 0x81, 0, 0, 0, 0, 0, 0, 0, 0, 7, 'a', '/', 's', 'm', 'a', 'l', 'l'})
	f.Add(small[:1500], []byte{0, 9})
	f.Add([]byte{}, []byte{1, 2, 3})
	f.Add(tarchecktest.Tar(f, []tarchecktest.Entry{{Header: tar.Header{Name: "../x", Typeflag: tar.TypeReg, Mode: 0o644}}}), []byte{0})
	gnu := tarchecktest.Entries(10)
	for i := range gnu {
		gnu[i].Header.Format = tar.FormatGNU
		gnu[i].Header.PAXRecords = nil
	}
	f.Add(tarchecktest.Tar(f, gnu), []byte{5, 6})
	f.Fuzz(func(t *testing.T, tarBytes, table []byte) {
		if len(tarBytes) > 1<<20 {
			return
		}
		// An arbitrary table.
		if err := Check(bytes.NewReader(tarBytes), decodeTable(table)); err != nil && !errors.Is(err, ErrMismatch) {
			t.Fatalf("arbitrary table: not a Mismatch: %v", err)
		}
		// The honest table.
		es, ok := reference(tarBytes)
		if !ok {
			return
		}
		if err := Check(bytes.NewReader(tarBytes), es); err != nil {
			t.Fatalf("honest table of %d entries: %v", len(es), err)
		}
		if len(es) == 0 || len(table) < 2 {
			return
		}
		// One lie.
		k := int(table[0]) % len(es)
		lied, field := lie(es, k, table[1])
		if field == "" {
			return
		}
		err := Check(bytes.NewReader(tarBytes), lied)
		var m *Mismatch
		if !errors.As(err, &m) || m.Index != k {
			t.Fatalf("lie about %s of entry %d %q: got %v", field, k, es[k].Name, err)
		}
	})
}

// decodeTable makes up to 256 entries of arbitrary bytes.
func decodeTable(b []byte) []layer.Entry {
	var es []layer.Entry
	for len(b) >= 13 && len(es) < 256 {
		n := int(b[12])
		if n > len(b)-13 {
			n = len(b) - 13
		}
		e := layer.Entry{
			Type: layer.EntryType(b[0] % 9), Mode: uint32(binary.LittleEndian.Uint16(b[1:])) & 0o7777,
			UID: int(b[3]), GID: int(b[4]), Offset: int64(binary.LittleEndian.Uint32(b[5:])) * 512,
			Size: int64(b[9]) << (b[10] % 32), Devmajor: uint32(b[11]), Name: string(b[13 : 13+n]),
			Linkname: string(b[13 : 13+n/2]), ModTime: tarchecktest.Time,
		}
		es = append(es, e)
		b = b[13+n:]
	}
	return es
}

// reference builds the table an honest zTOC builder and fs/index would make
// of tarBytes; ok is false when they would reject it.
func reference(tarBytes []byte) ([]layer.Entry, bool) {
	src := &source{r: bytes.NewReader(tarBytes)}
	tr := tar.NewReader(src)
	var es []layer.Entry
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return es, true
		}
		if err != nil {
			return nil, false
		}
		typ, ok := entryType(h.Typeflag)
		name, nameOK := cleanName(h.Name)
		if !ok || !nameOK || h.Uid < 0 || h.Gid < 0 {
			return nil, false
		}
		if name == "" {
			continue
		}
		e := layer.Entry{Name: name, Type: typ, Mode: uint32(h.Mode & 0o7777), UID: h.Uid, GID: h.Gid, ModTime: h.ModTime, Xattrs: layer.XattrsFromPAX(h.PAXRecords)}
		switch typ {
		case layer.TypeReg:
			e.Offset, e.Size = src.n, h.Size
		case layer.TypeSymlink:
			e.Linkname = h.Linkname
		case layer.TypeHardlink:
			if e.Linkname, ok = cleanName(h.Linkname); !ok {
				return nil, false
			}
		case layer.TypeChar, layer.TypeBlock:
			if h.Devmajor < 0 || h.Devminor < 0 || h.Devmajor > 1<<32-1 || h.Devminor > 1<<32-1 {
				return nil, false
			}
			e.Devmajor, e.Devminor = uint32(h.Devmajor), uint32(h.Devminor)
		}
		es = append(es, e)
	}
}

// lie returns a copy of es with one field of entry k changed (which by how)
// and the field's name; "" when that change is no lie for this entry.
func lie(es []layer.Entry, k int, how byte) ([]layer.Entry, string) {
	out := make([]layer.Entry, len(es))
	copy(out, es)
	e := &out[k]
	switch how % 7 {
	case 0:
		e.Name += "x"
		return out, FieldName
	case 1:
		e.Mode ^= 0o4000
		return out, FieldMode
	case 2:
		e.UID++
		return out, FieldUID
	case 3:
		if !storableTime(e.ModTime) {
			return nil, ""
		}
		e.ModTime = e.ModTime.Add(time.Second)
		return out, FieldModTime
	case 4:
		e.Xattrs = maps.Clone(e.Xattrs)
		if e.Xattrs == nil {
			e.Xattrs = map[string]string{}
		}
		e.Xattrs["security.capability"] += "x"
		return out, FieldXattrs
	case 5:
		switch e.Type {
		case layer.TypeReg:
			e.Offset++
			return out, FieldOffset
		case layer.TypeSymlink, layer.TypeHardlink:
			e.Linkname += "x"
			return out, FieldLinkname
		case layer.TypeChar, layer.TypeBlock:
			e.Devmajor++
			return out, FieldDevmajor
		}
		return nil, ""
	default:
		if e.Type == layer.TypeReg {
			e.Size++
			return out, FieldSize
		}
		e.GID++
		return out, FieldGID
	}
}
