package layer

import (
	"context"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

var (
	_ fusefs.FileReaddirenter = (*dirStream)(nil)
	_ fusefs.FileSeekdirer    = (*dirStream)(nil)
	_ fusefs.FileReleasedirer = (*dirStream)(nil)
)

// OpendirHandle opens a directory for listing ".", ".." and the children
// in tar order. The kernel may cache the listing: it never changes.
func (i *inode) OpendirHandle(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	i.logOp("opendir", "")
	if !i.n.isDir() {
		return nil, 0, syscall.ENOTDIR
	}
	parent := i.n.ino
	if _, p := i.Parent(); p != nil {
		parent = p.StableAttr().Ino
	}
	d := &dirStream{self: i.n.ino, parent: parent}
	if i.n.dir != nil {
		d.list = i.n.dir.list
	}
	return d, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// dirStream walks a directory without copying it. Position 0 is ".",
// 1 is "..", then the dirents; an entry's offset is the next position.
// go-fuse serializes calls on one handle.
type dirStream struct {
	list         []dirent
	self, parent uint64
	pos          int
}

// Readdirent returns the entry at the current position, nil at the end.
func (d *dirStream) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	var e fuse.DirEntry
	switch {
	case d.pos == 0:
		e = fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: d.self}
	case d.pos == 1:
		e = fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: d.parent}
	case d.pos-2 < len(d.list):
		de := d.list[d.pos-2]
		e = fuse.DirEntry{Name: de.name, Mode: de.n.mode & syscall.S_IFMT, Ino: de.n.ino}
	default:
		return nil, 0
	}
	d.pos++
	e.Off = uint64(d.pos)
	return &e, 0
}

// Seekdir moves to an offset returned earlier (0 is the start).
func (d *dirStream) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off > uint64(len(d.list)+2) {
		return syscall.EINVAL
	}
	d.pos = int(off)
	return 0
}

// Releasedir has nothing to release.
func (d *dirStream) Releasedir(ctx context.Context, releaseFlags uint32) {}
