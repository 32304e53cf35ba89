// Package tarcheck compares a layer's file table, as its zTOC describes it
// (fs/layer entries), with the tar headers of the real layer. The zTOC comes
// from whoever pushed the index, the tar stream from a blob verified against
// its digest: a difference means the zTOC lies about the layer.
//
// Check streams: it holds one tar header (and its PAX records, which
// archive/tar bounds) at a time, never the layer.
package tarcheck

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
)

// Fields a Mismatch names.
const (
	FieldName     = "name"
	FieldType     = "type"
	FieldSize     = "size"
	FieldOffset   = "offset" // file data offset in the uncompressed stream
	FieldMode     = "mode"
	FieldUID      = "uid"
	FieldGID      = "gid"
	FieldModTime  = "mtime"
	FieldLinkname = "linkname"
	FieldDevmajor = "devmajor"
	FieldDevminor = "devminor"
	FieldXattrs   = "xattrs"
	// FieldMissing: the tar holds an entry the file table lacks.
	FieldMissing = "missing entry"
	// FieldExtra: the file table holds an entry the tar lacks.
	FieldExtra = "extra entry"
	// FieldStream: the stream is not a valid tar archive.
	FieldStream = "tar stream"
)

// ErrMismatch is matched (errors.Is) by every *Mismatch.
var ErrMismatch = errors.New("file table does not match the tar stream")

// Mismatch is the first difference between the file table and the tar.
type Mismatch struct {
	// Index is the position in the file table of the entry concerned
	// (len(entries) for a tar entry past its end).
	Index int
	// Name is the entry's name: the table's, or the tar's for FieldMissing.
	Name  string
	Field string
	// Want is what the file table says, Got what the tar header says.
	Want, Got string
}

func (m *Mismatch) Error() string {
	return fmt.Sprintf("entry %d %q: %s: file table has %s, tar has %s", m.Index, m.Name, m.Field, m.Want, m.Got)
}

// Is makes errors.Is(err, ErrMismatch) true.
func (m *Mismatch) Is(target error) bool { return target == ErrMismatch }

// Check reads the tar stream r up to its end-of-archive marker and compares
// each header, in order, with entries (as fs/index converts a zTOC: entries
// naming the layer root are left out, names are cleaned, mode keeps the
// permission, setuid, setgid and sticky bits). It returns nil when they
// agree, the first difference as a *Mismatch, or an error wrapping r's own
// read error (not a Mismatch: nothing is known then). It does not read past
// the end-of-archive marker.
func Check(r io.Reader, entries []layer.Entry) error {
	src := &source{r: r}
	tr := tar.NewReader(src)
	i := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) && src.err == nil {
			break
		}
		if err != nil {
			return src.fail(i, entries, err)
		}
		name, ok := cleanName(h.Name)
		if ok && name == "" {
			continue // the layer root: dropped from the table
		}
		if i == len(entries) {
			return &Mismatch{Index: i, Name: h.Name, Field: FieldMissing, Want: "no more entries", Got: fmt.Sprintf("%q", h.Name)}
		}
		e := &entries[i]
		if !ok || name != e.Name {
			return src.nameMismatch(tr, i, entries, h.Name)
		}
		if m := compare(e, h, src.n); m != nil {
			m.Index, m.Name = i, e.Name
			return m
		}
		i++
	}
	if i < len(entries) {
		return &Mismatch{Index: i, Name: entries[i].Name, Field: FieldExtra, Want: fmt.Sprintf("%d more entries", len(entries)-i), Got: "end of archive"}
	}
	return nil
}

// source counts the bytes read from r and keeps r's first error, so that a
// failing reader is told apart from a malformed archive.
type source struct {
	r   io.Reader
	n   int64
	err error
}

func (s *source) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if err != nil && !errors.Is(err, io.EOF) && s.err == nil {
		s.err = err
	}
	return n, err
}

// fail turns a failed Next into r's error or a FieldStream mismatch.
func (s *source) fail(i int, entries []layer.Entry, err error) error {
	if s.err != nil {
		return fmt.Errorf("read tar stream at byte %d: %w", s.n, s.err)
	}
	m := &Mismatch{Index: i, Field: FieldStream, Want: "a tar header", Got: fmt.Sprintf("%v at byte %d", err, s.n)}
	if i < len(entries) {
		m.Name = entries[i].Name
	}
	return m
}

// nameMismatch classifies a name difference at table entry i: an entry one
// side lacks when the other side's next name is this one, else a wrong name.
func (s *source) nameMismatch(tr *tar.Reader, i int, entries []layer.Entry, got string) error {
	if i+1 < len(entries) {
		if n, ok := cleanName(got); ok && n == entries[i+1].Name {
			return &Mismatch{Index: i, Name: entries[i].Name, Field: FieldExtra, Want: fmt.Sprintf("%q", entries[i].Name), Got: "no such entry"}
		}
	}
	next, err := tr.Next()
	if err == nil {
		if n, ok := cleanName(next.Name); ok && n == entries[i].Name {
			return &Mismatch{Index: i, Name: got, Field: FieldMissing, Want: "no such entry", Got: fmt.Sprintf("%q", got)}
		}
	} else if s.err != nil {
		return fmt.Errorf("read tar stream at byte %d: %w", s.n, s.err)
	}
	return &Mismatch{Index: i, Name: entries[i].Name, Field: FieldName, Want: fmt.Sprintf("%q", entries[i].Name), Got: fmt.Sprintf("%q", got)}
}

// compare returns the first field of e that h (whose data starts at off)
// contradicts, without Index and Name.
func compare(e *layer.Entry, h *tar.Header, off int64) *Mismatch {
	typ, ok := entryType(h.Typeflag)
	if !ok || typ != e.Type {
		return diff(FieldType, typeName(e.Type), fmt.Sprintf("tar type %q", h.Typeflag))
	}
	if mode := uint32(h.Mode & 0o7777); mode != e.Mode {
		return diff(FieldMode, fmt.Sprintf("%#o", e.Mode), fmt.Sprintf("%#o", mode))
	}
	if int64(e.UID) != int64(h.Uid) {
		return diff(FieldUID, fmt.Sprint(e.UID), fmt.Sprint(h.Uid))
	}
	if int64(e.GID) != int64(h.Gid) {
		return diff(FieldGID, fmt.Sprint(e.GID), fmt.Sprint(h.Gid))
	}
	if storableTime(h.ModTime) && !e.ModTime.Equal(h.ModTime) {
		return diff(FieldModTime, e.ModTime.UTC().Format(time.RFC3339Nano), h.ModTime.UTC().Format(time.RFC3339Nano))
	}
	switch typ {
	case layer.TypeReg:
		if e.Size != h.Size {
			return diff(FieldSize, fmt.Sprint(e.Size), fmt.Sprint(h.Size))
		}
		if e.Offset != off {
			return diff(FieldOffset, fmt.Sprint(e.Offset), fmt.Sprint(off))
		}
	case layer.TypeSymlink:
		if e.Linkname != h.Linkname {
			return diff(FieldLinkname, fmt.Sprintf("%q", e.Linkname), fmt.Sprintf("%q", h.Linkname))
		}
	case layer.TypeHardlink:
		if target, ok := cleanName(h.Linkname); !ok || target != e.Linkname {
			return diff(FieldLinkname, fmt.Sprintf("%q", e.Linkname), fmt.Sprintf("%q", h.Linkname))
		}
	case layer.TypeChar, layer.TypeBlock:
		if h.Devmajor < 0 || h.Devmajor > math.MaxUint32 || uint32(h.Devmajor) != e.Devmajor {
			return diff(FieldDevmajor, fmt.Sprint(e.Devmajor), fmt.Sprint(h.Devmajor))
		}
		if h.Devminor < 0 || h.Devminor > math.MaxUint32 || uint32(h.Devminor) != e.Devminor {
			return diff(FieldDevminor, fmt.Sprint(e.Devminor), fmt.Sprint(h.Devminor))
		}
	}
	if x := layer.XattrsFromPAX(h.PAXRecords); !maps.Equal(x, e.Xattrs) {
		return diff(FieldXattrs, fmt.Sprintf("%d attributes %q", len(e.Xattrs), sortedKeys(e.Xattrs)), fmt.Sprintf("%d attributes %q", len(x), sortedKeys(x)))
	}
	return nil
}

func diff(field, want, got string) *Mismatch { return &Mismatch{Field: field, Want: want, Got: got} }

// storableTime reports whether a zTOC can hold t (it stores the RFC 3339
// text, years 0-9999); other times are not compared.
func storableTime(t time.Time) bool {
	y := t.Year()
	return y >= 0 && y <= 9999
}

// entryType maps a tar type flag as soci's zTOC builder does.
func entryType(flag byte) (layer.EntryType, bool) {
	switch flag {
	case tar.TypeReg, '\x00': // '\x00': the old regular-file flag
		return layer.TypeReg, true
	case tar.TypeDir:
		return layer.TypeDir, true
	case tar.TypeSymlink:
		return layer.TypeSymlink, true
	case tar.TypeLink:
		return layer.TypeHardlink, true
	case tar.TypeChar:
		return layer.TypeChar, true
	case tar.TypeBlock:
		return layer.TypeBlock, true
	case tar.TypeFifo:
		return layer.TypeFifo, true
	}
	return 0, false
}

func typeName(t layer.EntryType) string {
	switch t {
	case layer.TypeReg:
		return "regular file"
	case layer.TypeDir:
		return "directory"
	case layer.TypeSymlink:
		return "symlink"
	case layer.TypeHardlink:
		return "hardlink"
	case layer.TypeChar:
		return "char device"
	case layer.TypeBlock:
		return "block device"
	case layer.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("type %d", t)
}

// cleanName cleans a tar name as fs/index does for zTOC names: leading "/"
// stripped, "." and ".." resolved, "" for the root; ok is false for names
// the table cannot hold (empty, NUL bytes, escaping the root).
func cleanName(name string) (string, bool) {
	if name == "" || strings.IndexByte(name, 0) >= 0 {
		return "", false
	}
	p := path.Clean(strings.TrimLeft(name, "/"))
	switch {
	case p == ".":
		return "", true
	case p == ".." || strings.HasPrefix(p, "../"):
		return "", false
	}
	return p, true
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }
