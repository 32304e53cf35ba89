package layer

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
)

// EntryType is the kind of a tar entry.
type EntryType uint8

// The kinds of entries a layer holds.
const (
	TypeReg EntryType = iota + 1
	TypeDir
	TypeSymlink
	TypeHardlink
	TypeChar
	TypeBlock
	TypeFifo
)

// Entry is one tar entry of a layer, as its zTOC describes it.
type Entry struct {
	// Name is the cleaned path inside the layer: no leading "/" or "./",
	// no trailing "/", never "." or "..". Whiteouts keep their ".wh." names.
	Name string
	Type EntryType
	// Offset and Size locate a regular file's data in the uncompressed tar stream.
	Offset, Size int64
	// Linkname is a symlink's target, or a hardlink's target path (cleaned like Name).
	Linkname string
	// Mode holds the permission bits plus the setuid, setgid and sticky
	// bits (0o7777 of the tar header's mode, as in stat).
	Mode               uint32
	UID, GID           int
	ModTime            time.Time
	Devmajor, Devminor uint32
	// Xattrs are the entry's extended attributes (from PAX SCHILY.xattr.* records).
	Xattrs map[string]string
}

// TOC is every entry of a layer, in tar order.
type TOC struct {
	Entries []Entry
}

// maxNameLen is the longest path component Linux accepts (NAME_MAX).
const maxNameLen = 255

// validate checks the fields NewRoot relies on. It does not allocate unless
// it fails.
func (e *Entry) validate() error {
	if err := validatePath(e.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	switch e.Type {
	case TypeReg:
		if e.Size < 0 || e.Offset < 0 || e.Offset > math.MaxInt64-e.Size {
			return fmt.Errorf("bad data range: offset %d size %d", e.Offset, e.Size)
		}
	case TypeHardlink:
		if err := validatePath(e.Linkname); err != nil {
			return fmt.Errorf("hardlink target: %w", err)
		}
	case TypeSymlink:
		if e.Linkname == "" || strings.IndexByte(e.Linkname, 0) >= 0 {
			return fmt.Errorf("bad symlink target %q", e.Linkname)
		}
	case TypeDir, TypeChar, TypeBlock, TypeFifo:
	default:
		return fmt.Errorf("unknown entry type %d", e.Type)
	}
	if e.UID < 0 || e.GID < 0 || int64(e.UID) > math.MaxUint32 || int64(e.GID) > math.MaxUint32 {
		return fmt.Errorf("owner %d:%d out of range", e.UID, e.GID)
	}
	return nil
}

// validatePath accepts a clean, relative, slash-separated path: not empty,
// no leading or trailing "/", no empty, "." or ".." components, no NUL
// byte, no component longer than NAME_MAX. The single name "." (the layer
// root) is accepted.
func validatePath(p string) error {
	if p == "." {
		return nil
	}
	if p == "" {
		return errors.New("empty path")
	}
	if p[0] == '/' {
		return fmt.Errorf("path %q is absolute", p)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("path %q contains a NUL byte", p)
	}
	for rest := p; ; {
		comp, tail, more := strings.Cut(rest, "/")
		switch {
		case comp == "..":
			return fmt.Errorf("path %q has a \"..\" component", p)
		case comp == "" || comp == ".":
			return fmt.Errorf("path %q is not clean", p)
		case len(comp) > maxNameLen:
			return fmt.Errorf("path %q has a component longer than %d bytes", p, maxNameLen)
		}
		if !more {
			return nil
		}
		rest = tail
	}
}

// xattrPAXPrefix marks the PAX records of a tar header that carry extended
// attributes.
const xattrPAXPrefix = "SCHILY.xattr."

// XattrsFromPAX returns the extended attributes that a tar header's PAX
// records carry (nil when there are none), as Entry.Xattrs holds them.
func XattrsFromPAX(pax map[string]string) map[string]string {
	var m map[string]string
	for k, v := range pax {
		name, ok := strings.CutPrefix(k, xattrPAXPrefix)
		if !ok || name == "" {
			continue
		}
		if m == nil {
			m = map[string]string{}
		}
		m[name] = v
	}
	return m
}
