package layer

import (
	"math"
	"strings"
	"syscall"
	"time"
)

// Overlay whiteout conventions (OCI image spec, layer.md), converted the way
// containerd's overlay applier does: ".wh.NAME" becomes a character device
// 0/0 called NAME, ".wh..wh..opq" marks its directory opaque.
const (
	whiteoutPrefix   = ".wh."
	opaqueMarker     = ".wh..wh..opq"
	opaqueXattr      = "trusted.overlay.opaque"
	opaqueXattrValue = "y"
)

const (
	rootIno = 1 // go-fuse's default root inode number
	// blockSize is the block size reported by Getattr and Statfs; block
	// counts follow ext4 (whole 4 KiB blocks, counted in 512-byte units).
	blockSize = 4096
	// dirSize is the size ext4 reports for a small directory.
	dirSize = 4096
	// smallDir is the child count up to which a directory is searched
	// linearly; larger directories get a name index.
	smallDir = 8
	// implicitDirMode is how containerd creates missing parent directories.
	implicitDirMode = 0o755
)

// node is one inode of the layer. Hardlinked names share one node. The tree
// is immutable once NewRoot returns, so nodes need no locking.
type node struct {
	dir    *children         // children of a directory, nil otherwise
	xattrs map[string]string // usually the TOC entry's own map
	link   string            // symlink target
	offset int64             // regular file: data offset in the tar stream
	size   int64             // regular file: data size
	ino    uint64
	mtime  int64 // seconds since the Unix epoch
	mtimeN uint32
	mode   uint32 // S_IFMT bits | permission bits
	uid    uint32
	gid    uint32
	rdev   uint32
	nlink  uint32 // names referring to a non-directory
	opaque bool   // directory holds an opaque marker
}

func (n *node) isDir() bool { return n.mode&syscall.S_IFMT == syscall.S_IFDIR }

// dirent is one name in a directory.
type dirent struct {
	name string // shares the TOC's string
	n    *node
}

// children is a directory's entries in tar order. A name that appears again
// replaces its dirent in place, so positions are stable and no dirent is
// ever removed.
type children struct {
	list    []dirent
	index   map[string]int32 // name -> position in list, for large directories
	subdirs uint32           // directories among list, for nlink
}

// find returns the position of name in c, or -1.
func (c *children) find(name string) int {
	if c == nil {
		return -1
	}
	if c.index != nil {
		if i, ok := c.index[name]; ok {
			return int(i)
		}
		return -1
	}
	for i := range c.list {
		if c.list[i].name == name {
			return i
		}
	}
	return -1
}

// get returns the node called name in c, or nil.
func (c *children) get(name string) *node {
	if i := c.find(name); i >= 0 {
		return c.list[i].n
	}
	return nil
}

// add appends a new name; the caller checked that it is absent.
func (c *children) add(name string, n *node) {
	c.list = append(c.list, dirent{name: name, n: n})
	switch {
	case c.index != nil:
		c.index[name] = int32(len(c.list) - 1)
	case len(c.list) > smallDir:
		c.index = make(map[string]int32, len(c.list)*2)
		for i, d := range c.list {
			c.index[d.name] = int32(i)
		}
	}
	if n.isDir() {
		c.subdirs++
	}
}

// nlinks is the link count stat reports for n: the names of a file, 2 plus
// the subdirectories for a directory.
func (n *node) nlinks() uint32 {
	if !n.isDir() {
		return n.nlink
	}
	if n.dir == nil {
		return 2
	}
	return 2 + n.dir.subdirs
}

// setMtime stores t the way containerd's applier bounds it: times before the
// Unix epoch or beyond what a timespec holds become the epoch.
func (n *node) setMtime(t time.Time) {
	if t.Before(time.Unix(0, 0)) || t.After(time.Unix(0, math.MaxInt64)) {
		n.mtime, n.mtimeN = 0, 0
		return
	}
	n.mtime, n.mtimeN = t.Unix(), uint32(t.Nanosecond())
}

// setOwnerModeTime applies the metadata every tar header carries.
func (n *node) setOwnerModeTime(e *Entry) {
	n.mode = n.mode&syscall.S_IFMT | e.Mode&0o7777
	n.uid, n.gid = uint32(e.UID), uint32(e.GID)
	n.setMtime(e.ModTime)
}

// addXattrs sets xattrs on n the way setxattr(2) would, one by one: existing
// keys are overwritten, others kept. The TOC's map is shared, not copied,
// unless two maps must be merged.
func (n *node) addXattrs(x map[string]string) {
	if n.mode&syscall.S_IFMT != syscall.S_IFREG && !n.isDir() {
		// Linux refuses user.* xattrs on other file types, and
		// containerd's applier skips them.
		x = withoutUserXattrs(x)
	}
	switch {
	case len(x) == 0:
	case len(n.xattrs) == 0:
		n.xattrs = x
	default:
		m := make(map[string]string, len(n.xattrs)+len(x))
		for k, v := range n.xattrs {
			m[k] = v
		}
		for k, v := range x {
			m[k] = v
		}
		n.xattrs = m
	}
}

// withoutUserXattrs returns x without its user.* keys, copying only when
// there are any.
func withoutUserXattrs(x map[string]string) map[string]string {
	found := false
	for k := range x {
		if strings.HasPrefix(k, "user.") {
			found = true
			break
		}
	}
	if !found {
		return x
	}
	m := make(map[string]string, len(x))
	for k, v := range x {
		if !strings.HasPrefix(k, "user.") {
			m[k] = v
		}
	}
	return m
}
