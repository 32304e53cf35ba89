package layer

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// implicitSlab is how many nodes are allocated at once once the first slab,
// sized for the TOC, is used up (implicit directories, replacements).
const implicitSlab = 256

// builder turns a TOC into a node tree in one pass, applying entries the
// way containerd's overlay applier applies a tar stream.
type builder struct {
	root    *node
	nextIno uint64
	slab    []node // nodes are carved from slabs: few allocations
	// The directory most recently resolved or created, to skip walking
	// from the root for entries of the same or a deeper directory.
	lastPath string
	lastDir  *node
	files    uint64 // live nodes, for Statfs
	blocks   uint64 // 4 KiB blocks of data, for Statfs
	// maxDepth bounds the components of a path; maxImplicit the parent
	// directories created without an entry of their own.
	maxDepth, maxImplicit int
	implicit              int
}

// newBuilder returns a builder for the given number of entries; maxDepth
// <= 0 takes DefaultMaxDepth. Implicit directories are limited to one per
// entry plus maxDepth (one file at the maximum depth), which bounds the
// nodes, and so the memory, of a tree to about two per entry.
func newBuilder(entries, maxDepth int) *builder {
	if maxDepth <= 0 {
		maxDepth = DefaultMaxDepth
	}
	b := &builder{slab: make([]node, 0, entries+1), files: 1, maxDepth: maxDepth, maxImplicit: entries + maxDepth}
	b.root = b.newNode(syscall.S_IFDIR | implicitDirMode)
	return b
}

// newNode returns a fresh node with the next inode number.
func (b *builder) newNode(mode uint32) *node {
	if len(b.slab) == cap(b.slab) {
		b.slab = make([]node, 0, implicitSlab)
	}
	b.slab = b.slab[:len(b.slab)+1]
	n := &b.slab[len(b.slab)-1]
	b.nextIno++
	n.ino, n.mode = b.nextIno, mode
	return n
}

// build applies every entry, then packs the directories.
func (b *builder) build(entries []Entry) error {
	for i := range entries {
		e := &entries[i]
		if err := b.add(e); err != nil {
			return fmt.Errorf("layer toc: entry %d %q: %w: %w", i, e.Name, err, errdefs.ErrInvalidArgument)
		}
	}
	b.pack()
	return nil
}

// add applies one entry.
func (b *builder) add(e *Entry) error {
	if err := e.validate(); err != nil {
		return err
	}
	if d := depth(e.Name); d > b.maxDepth {
		return fmt.Errorf("%d directory levels, more than limits.max_tree_depth (%d)", d, b.maxDepth)
	}
	if e.Name == "." {
		return nil // containerd ignores entries that resolve to the root
	}
	parentPath, base := "", e.Name
	if i := strings.LastIndexByte(e.Name, '/'); i >= 0 {
		parentPath, base = e.Name[:i], e.Name[i+1:]
	}
	parent, err := b.dir(parentPath)
	if err != nil {
		return err
	}
	switch {
	case base == opaqueMarker:
		parent.opaque = true
		return nil
	case strings.HasPrefix(base, whiteoutPrefix):
		return b.whiteout(parent, base[len(whiteoutPrefix):], e)
	case e.Type == TypeHardlink:
		return b.hardlink(parent, base, e)
	case e.Type == TypeDir:
		if old := parent.dir.get(base); old != nil && old.isDir() {
			// An existing directory is merged, not replaced.
			old.setOwnerModeTime(e)
			old.addXattrs(e.Xattrs)
			b.lastPath, b.lastDir = e.Name, old
			return nil
		}
	}
	n := b.entryNode(e)
	b.put(parent, base, n)
	if n.isDir() {
		b.lastPath, b.lastDir = e.Name, n
	}
	return nil
}

// entryNode makes the node of a file, directory, symlink, device or fifo.
func (b *builder) entryNode(e *Entry) *node {
	n := b.newNode(fileType(e.Type))
	n.setOwnerModeTime(e)
	switch e.Type {
	case TypeReg:
		n.offset, n.size = e.Offset, e.Size
	case TypeSymlink:
		n.mode = syscall.S_IFLNK | 0o777 // symlink permissions are fixed
		n.link, n.size = e.Linkname, int64(len(e.Linkname))
	case TypeChar, TypeBlock:
		n.rdev = uint32(unix.Mkdev(e.Devmajor, e.Devminor))
	}
	n.addXattrs(e.Xattrs)
	return n
}

// fileType maps an entry type to its S_IFMT bits.
func fileType(t EntryType) uint32 {
	switch t {
	case TypeDir:
		return syscall.S_IFDIR
	case TypeSymlink:
		return syscall.S_IFLNK
	case TypeChar:
		return syscall.S_IFCHR
	case TypeBlock:
		return syscall.S_IFBLK
	case TypeFifo:
		return syscall.S_IFIFO
	}
	return syscall.S_IFREG
}

// whiteout adds the overlay form of ".wh.NAME": a character device 0/0
// without permission bits, owned like the tar entry.
func (b *builder) whiteout(parent *node, name string, e *Entry) error {
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("invalid whiteout name %q", whiteoutPrefix+name)
	}
	n := b.newNode(syscall.S_IFCHR)
	n.uid, n.gid = uint32(e.UID), uint32(e.GID)
	n.setMtime(e.ModTime)
	b.put(parent, name, n)
	return nil
}

// hardlink links name to the node at e.Linkname. As link(2) plus chown,
// chmod, setxattr and utimes on the new name do in containerd's applier,
// the link entry's metadata then applies to the shared inode.
func (b *builder) hardlink(parent *node, name string, e *Entry) error {
	target, err := b.lookup(e.Linkname)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", e.Linkname, err)
	}
	if target.isDir() {
		return fmt.Errorf("hardlink target %q is a directory", e.Linkname)
	}
	target.setOwnerModeTime(e)
	target.addXattrs(e.Xattrs)
	b.put(parent, name, target)
	return nil
}

// put binds name in parent to n, replacing what the name held before.
func (b *builder) put(parent *node, name string, n *node) {
	if parent.dir == nil {
		parent.dir = &children{}
	}
	if n.isDir() {
		b.files++
	} else {
		if n.nlink == 0 {
			b.files++
			b.blocks += blocksOf(n.size)
		}
		n.nlink++
	}
	c := parent.dir
	i := c.find(name)
	if i < 0 {
		c.add(name, n)
		return
	}
	old := c.list[i].n
	c.list[i].n = n
	if old.isDir() {
		c.subdirs--
	}
	if n.isDir() {
		c.subdirs++
	}
	b.unlink(old)
}

// unlink drops one name of n; for a directory, its whole tree (walked
// with an explicit stack: a tree may be deep).
func (b *builder) unlink(n *node) {
	stack := []*node{n}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if !n.isDir() {
			n.nlink--
			if n.nlink == 0 {
				b.files--
				b.blocks -= blocksOf(n.size)
			}
			continue
		}
		b.files--
		b.lastDir, b.lastPath = nil, "" // it may be cached, or hold the cached one
		if n.dir != nil {
			for _, d := range n.dir.list {
				stack = append(stack, d.n)
			}
		}
	}
}

// depth is the number of components of a validated path ("." has none).
func depth(p string) int {
	if p == "." {
		return 0
	}
	return strings.Count(p, "/") + 1
}

// blocksOf is the number of 4 KiB blocks size bytes occupy.
func blocksOf(size int64) uint64 {
	return uint64((size + blockSize - 1) / blockSize)
}

var errNotDir = errors.New("not a directory")

// dir returns the directory at path p (relative, "" for the root),
// creating missing directories as containerd does: mode 0755, root:root.
func (b *builder) dir(p string) (*node, error) {
	n, rest := b.root, p
	if b.lastDir != nil && strings.HasPrefix(p, b.lastPath) {
		switch {
		case len(p) == len(b.lastPath):
			return b.lastDir, nil
		case p[len(b.lastPath)] == '/':
			n, rest = b.lastDir, p[len(b.lastPath)+1:]
		}
	}
	for rest != "" {
		comp, tail, _ := strings.Cut(rest, "/")
		child := n.dir.get(comp)
		if child == nil {
			if b.implicit++; b.implicit > b.maxImplicit {
				return nil, fmt.Errorf("parent %q: more than %d directories without an entry of their own", p[:len(p)-len(rest)+len(comp)], b.maxImplicit)
			}
			child = b.newNode(syscall.S_IFDIR | implicitDirMode)
			b.put(n, comp, child)
		} else if !child.isDir() {
			return nil, fmt.Errorf("parent %q: %w", p[:len(p)-len(rest)+len(comp)], errNotDir)
		}
		n, rest = child, tail
	}
	if p != "" {
		b.lastPath, b.lastDir = p, n
	}
	return n, nil
}

// lookup resolves an existing path without creating anything. Symlinks
// are not followed.
func (b *builder) lookup(p string) (*node, error) {
	n := b.root
	for rest := p; rest != ""; {
		comp, tail, _ := strings.Cut(rest, "/")
		if !n.isDir() {
			return nil, errNotDir
		}
		if n = n.dir.get(comp); n == nil {
			return nil, errors.New("no such file or directory")
		}
		rest = tail
	}
	return n, nil
}

// pack moves every directory's dirents into one shared array, sized
// exactly, so the slack of append-grown slices is freed.
func (b *builder) pack() {
	total := 0
	b.walkDirs(b.root, func(c *children) { total += len(c.list) })
	all := make([]dirent, 0, total)
	b.walkDirs(b.root, func(c *children) {
		start := len(all)
		all = append(all, c.list...)
		c.list = all[start:len(all):len(all)]
	})
}

// walkDirs calls f for the children of n and of every directory below it,
// depth first, with an explicit stack: a tree may be deep.
func (b *builder) walkDirs(n *node, f func(*children)) {
	stack := []*node{n}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if n.dir == nil {
			continue
		}
		f(n.dir)
		for i := len(n.dir.list) - 1; i >= 0; i-- {
			if d := n.dir.list[i].n; d.isDir() {
				stack = append(stack, d)
			}
		}
	}
}
