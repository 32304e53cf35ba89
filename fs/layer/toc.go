package layer

import "time"

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

// Mode bits beyond the permission bits, as in the tar header (and stat).
const (
	ModeSetuid = 0o4000
	ModeSetgid = 0o2000
	ModeSticky = 0o1000
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
	// Mode holds permission bits plus ModeSetuid/ModeSetgid/ModeSticky.
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
