package index

import (
	"errors"
	"fmt"
	"math"
	"path"
	"strings"

	"github.com/awslabs/soci-snapshotter/ztoc"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// entryType maps the type names soci's TOC builder writes (ztoc getType).
func entryType(name string) (layer.EntryType, bool) {
	switch name {
	case "reg":
		return layer.TypeReg, true
	case "dir":
		return layer.TypeDir, true
	case "symlink":
		return layer.TypeSymlink, true
	case "hardlink":
		return layer.TypeHardlink, true
	case "char":
		return layer.TypeChar, true
	case "block":
		return layer.TypeBlock, true
	case "fifo":
		return layer.TypeFifo, true
	}
	return 0, false
}

// modeBits are the tar mode bits an entry keeps: permissions plus setuid,
// setgid and sticky.
const modeBits = 0o7777

// converted is a validated zTOC in our types, plus what Layer needs.
type converted struct {
	toc layer.TOC
	layout
}

// Convert validates a zTOC and converts it into a TOC and a span table.
// Everything in a zTOC comes from whoever built the image, so it checks:
// the span count against MaxSpanID, the span digests and the checkpoints;
// that spans are ordered and inside the blob and the tar stream; that file
// data lies inside the tar stream; names (cleaned; ".." escapes rejected);
// entry types and device numbers. Entries naming the layer root are
// dropped.
func Convert(z *ztoc.Ztoc) (layer.TOC, span.Table, error) {
	c, err := convert(z)
	if err != nil {
		return layer.TOC{}, span.Table{}, err
	}
	return c.toc, c.table, nil
}

func convert(z *ztoc.Ztoc) (*converted, error) {
	if z == nil {
		return nil, errors.New("convert zTOC: nil")
	}
	if z.Version != ztoc.Version09 {
		return nil, fmt.Errorf("convert zTOC: unsupported version %q", z.Version)
	}
	if z.CompressedArchiveSize <= 0 || z.UncompressedArchiveSize < 0 {
		return nil, fmt.Errorf("convert zTOC: bad archive sizes %d (compressed), %d (uncompressed)",
			z.CompressedArchiveSize, z.UncompressedArchiveSize)
	}
	spans, err := spanLayout(z)
	if err != nil {
		return nil, fmt.Errorf("convert zTOC: %w", err)
	}
	toc, err := convertTOC(z.FileMetadata, int64(z.UncompressedArchiveSize))
	if err != nil {
		return nil, fmt.Errorf("convert zTOC: %w", err)
	}
	return &converted{toc: toc, layout: spans}, nil
}

func convertTOC(files []ztoc.FileMetadata, size int64) (layer.TOC, error) {
	entries := make([]layer.Entry, 0, len(files))
	for i := range files {
		e, keep, err := convertEntry(&files[i], size)
		if err != nil {
			return layer.TOC{}, fmt.Errorf("entry %d %q: %w", i, files[i].Name, err)
		}
		if keep {
			entries = append(entries, e)
		}
	}
	return layer.TOC{Entries: entries}, nil
}

// convertEntry converts one file; keep is false for the layer root.
func convertEntry(f *ztoc.FileMetadata, size int64) (e layer.Entry, keep bool, err error) {
	typ, ok := entryType(f.Type)
	if !ok {
		return e, false, fmt.Errorf("unknown type %q", f.Type)
	}
	name, err := cleanName(f.Name)
	if err != nil {
		return e, false, err
	}
	if name == "" {
		if typ != layer.TypeDir {
			return e, false, errors.New("the layer root is not a directory")
		}
		return e, false, nil
	}
	if f.UID < 0 || f.GID < 0 || int64(f.UID) > math.MaxUint32 || int64(f.GID) > math.MaxUint32 {
		return e, false, fmt.Errorf("owner %d:%d out of range", f.UID, f.GID)
	}
	e = layer.Entry{
		Name: name, Type: typ, Mode: uint32(f.Mode & modeBits), UID: f.UID, GID: f.GID,
		ModTime: f.ModTime, Xattrs: layer.XattrsFromPAX(f.PAXHeaders),
	}
	if err := entryPayload(&e, f, size); err != nil {
		return e, false, err
	}
	return e, true, nil
}

// entryPayload fills in what depends on the type: data range, link target,
// device numbers.
func entryPayload(e *layer.Entry, f *ztoc.FileMetadata, size int64) error {
	switch e.Type {
	case layer.TypeReg:
		off, n := int64(f.UncompressedOffset), int64(f.UncompressedSize)
		if off < 0 || n < 0 || off > size || n > size-off {
			return fmt.Errorf("data [%d, +%d) outside the %d-byte tar stream", off, n, size)
		}
		e.Offset, e.Size = off, n
	case layer.TypeSymlink:
		if f.Linkname == "" || strings.IndexByte(f.Linkname, 0) >= 0 {
			return fmt.Errorf("bad symlink target %q", f.Linkname)
		}
		e.Linkname = f.Linkname
	case layer.TypeHardlink:
		target, err := cleanName(f.Linkname)
		if err != nil || target == "" {
			return fmt.Errorf("bad hardlink target %q", f.Linkname)
		}
		e.Linkname = target
	case layer.TypeChar, layer.TypeBlock:
		if f.Devmajor < 0 || f.Devminor < 0 || f.Devmajor > math.MaxUint32 || f.Devminor > math.MaxUint32 {
			return fmt.Errorf("device %d:%d out of range", f.Devmajor, f.Devminor)
		}
		e.Devmajor, e.Devminor = uint32(f.Devmajor), uint32(f.Devminor)
	}
	return nil
}

// cleanName turns a tar name into a clean relative path: leading "/" and
// "./" stripped, "." and ".." resolved; "" for the root. Names escaping the
// root and names with NUL bytes are errors.
func cleanName(name string) (string, error) {
	if name == "" || strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("bad name %q", name)
	}
	p := path.Clean(strings.TrimLeft(name, "/"))
	switch {
	case p == ".":
		return "", nil
	case p == ".." || strings.HasPrefix(p, "../"):
		return "", fmt.Errorf("name %q escapes the layer root", name)
	}
	return p, nil
}
