package layer

import (
	"context"
	"path"
	"slices"
	"syscall"
)

// Getxattr returns one extended attribute. Following go-fuse, a dest too
// small for the value (including the size probe with an empty dest)
// yields the value's size and ERANGE.
//
// A layer in which no node has an attribute answers ENOSYS: the kernel then
// sends no more GETXATTR on the mount and answers EOPNOTSUPP itself, where
// it would otherwise ask once per file overlayfs looks up (its metacopy
// check) and per exec (security.capability) for nothing.
func (i *inode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	i.logOp("getxattr", "")
	if i.t.noXattrs {
		return 0, syscall.ENOSYS
	}
	var (
		v  string
		ok bool
	)
	switch {
	case attr == opaqueXattr && i.n.opaque:
		v, ok = opaqueXattrValue, true
	case !i.t.disableXattrs:
		v, ok = i.n.xattrs[attr]
	}
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// Listxattr writes the NUL-terminated names of the node's extended
// attributes, sorted. A dest too small for the list yields its size and
// ERANGE.
func (i *inode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	i.logOp("listxattr", "")
	names := i.xattrNames()
	size := 0
	for _, name := range names {
		size += len(name) + 1
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	off := 0
	for _, name := range names {
		off += copy(dest[off:], name)
		dest[off] = 0
		off++
	}
	return uint32(size), 0
}

// mayHaveXattrs reports whether a tree built from entries can have an
// extended attribute to report: an entry with xattrs (unless disabled) or
// an opaque marker. It errs on the side of yes: an entry whose xattrs a
// later one replaces still counts.
func mayHaveXattrs(entries []Entry, disabled bool) bool {
	for i := range entries {
		e := &entries[i]
		if !disabled && len(e.Xattrs) > 0 || path.Base(e.Name) == opaqueMarker {
			return true
		}
	}
	return false
}

// xattrNames lists the names Getxattr answers for.
func (i *inode) xattrNames() []string {
	var names []string
	if !i.t.disableXattrs {
		names = make([]string, 0, len(i.n.xattrs)+1)
		for k := range i.n.xattrs {
			if k != opaqueXattr || !i.n.opaque {
				names = append(names, k)
			}
		}
	}
	if i.n.opaque {
		names = append(names, opaqueXattr)
	}
	slices.Sort(names)
	return names
}
