package layer

import (
	"context"
	"errors"
	"io"
	"path"
	"sync"
	"syscall"

	"github.com/containerd/log"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// inode is the go-fuse face of a node. One is made per Lookup and dropped
// when the kernel forgets it, so only nodes in use cost a go-fuse Inode.
type inode struct {
	fusefs.Inode
	n *node
	t *tree

	// With passthrough (Options.Passthrough): the handles open with
	// cached reads and with a backing file; only one kind at a time.
	mu                     sync.Mutex
	cachedOpens, passOpens int32
}

var (
	_ fusefs.InodeEmbedder      = (*inode)(nil)
	_ fusefs.NodeLookuper       = (*inode)(nil)
	_ fusefs.NodeGetattrer      = (*inode)(nil)
	_ fusefs.NodeOpendirHandler = (*inode)(nil)
	_ fusefs.NodeReadlinker     = (*inode)(nil)
	_ fusefs.NodeOpener         = (*inode)(nil)
	_ fusefs.NodeFlusher        = (*inode)(nil)
	_ fusefs.NodeReader         = (*inode)(nil)
	_ fusefs.NodeGetxattrer     = (*inode)(nil)
	_ fusefs.NodeListxattrer    = (*inode)(nil)
	_ fusefs.NodeStatfser       = (*inode)(nil)
)

// Lookup finds a child by name: a map or short linear search.
func (i *inode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	i.logOp("lookup", name)
	if !i.n.isDir() {
		return nil, syscall.ENOTDIR
	}
	child := i.n.dir.get(name)
	if child == nil {
		return nil, syscall.ENOENT
	}
	fillAttr(child, &out.Attr)
	stable := fusefs.StableAttr{Mode: child.mode & syscall.S_IFMT, Ino: child.ino}
	return i.NewInode(ctx, &inode{n: child, t: i.t}, stable), 0
}

// Getattr reports the node's attributes.
func (i *inode) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	i.logOp("getattr", "")
	fillAttr(i.n, &out.Attr)
	return 0
}

// fillAttr converts a node to FUSE attributes. Atime and ctime, which an
// unpacked layer does not preserve either, equal mtime.
func fillAttr(n *node, a *fuse.Attr) {
	a.Ino = n.ino
	a.Mode = n.mode
	a.Nlink = n.nlinks()
	a.Uid, a.Gid = n.uid, n.gid
	a.Rdev = n.rdev
	a.Size = uint64(n.size)
	a.Blksize = blockSize
	a.Blocks = 0
	switch n.mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		a.Size = dirSize
		a.Blocks = blocksOf(dirSize) * (blockSize / 512)
	case syscall.S_IFREG:
		a.Blocks = blocksOf(n.size) * (blockSize / 512)
	}
	a.Mtime, a.Mtimensec = uint64(n.mtime), n.mtimeN
	a.Atime, a.Atimensec = a.Mtime, a.Mtimensec
	a.Ctime, a.Ctimensec = a.Mtime, a.Mtimensec
}

// Readlink returns a symlink's target.
func (i *inode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	i.logOp("readlink", "")
	if i.n.mode&syscall.S_IFMT != syscall.S_IFLNK {
		return nil, syscall.EINVAL
	}
	return []byte(i.n.link), 0
}

// Open refuses writing and otherwise answers ENOSYS (unless opens are
// watched, Options.OnOpen, or passthrough is on, Options.Passthrough, and
// the kernel did not refuse it): the kernel then
// opens every later file of the mount itself, with no OPEN or RELEASE
// request (FUSE no_open), and keeps cached pages across opens (its default
// without OPEN: the content never changes). Opening for writing fails
// with EROFS in the kernel already (a read-only mount); the check here
// covers a mount without it. With passthrough, a file whose bytes are
// local is opened on a backing file (see passthrough.go).
func (i *inode) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	i.logOp("open", "")
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	if i.t.onOpen != nil {
		// Opens are being watched (recorded prefetch's until-file):
		// answer them, which keeps the kernel sending OPEN for this
		// mount. Pages stay cached across opens as without OPEN.
		i.t.onOpen("/" + i.Path(nil))
	}
	pass := i.t.pass != nil && !i.t.pass.refused.Load()
	if pass && i.n.mode&syscall.S_IFMT == syscall.S_IFREG {
		return i.openPassthrough(ctx)
	}
	if i.t.onOpen != nil || pass {
		return nil, fuse.FOPEN_KEEP_CACHE, 0
	}
	return nil, 0, syscall.ENOSYS
}

// Flush answers ENOSYS, so the kernel sends no more FLUSH on close: there
// is nothing to write back.
func (i *inode) Flush(ctx context.Context, f fusefs.FileHandle) syscall.Errno {
	return syscall.ENOSYS
}

// Read serves file data from the layer's tar stream. Reader failures are
// logged at debug level and reported as EIO.
//
// go-fuse cancels a request's context when the reading process gets any
// signal (even Go's preemption signal); programs rarely retry a read of a
// regular file that fails with EINTR, so the Reader gets a context that is
// never cancelled (the tree's, made once: a request's carries nothing the
// Reader uses) and must bound its own time. A killed reader does not wait:
// the kernel abandons the request.
func (i *inode) Read(ctx context.Context, f fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	i.logOp("read", "")
	n := i.n
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= n.size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	want := min(int64(len(dest)), n.size-off)
	got, err := i.t.r.FetchAt(i.t.readCtx, dest[:want], n.offset+off)
	if int64(got) == want && (err == nil || errors.Is(err, io.EOF)) {
		if off == 0 && want < n.size && n.size <= StoreMaxBytes && i.t.local != nil {
			i.storeRest(want)
		}
		return fuse.ReadResultData(dest[:got]), 0
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	log.G(ctx).WithError(err).WithField("ino", n.ino).WithField("offset", off).
		Debugf("failed to read the file: layer read of %d bytes failed after %d", want, got)
	return nil, syscall.EIO
}

// StoreMaxBytes bounds the files whose first read also stores the rest of
// the file in the kernel's page cache (Options.Local): a program reading a
// file in small steps gets it in one READ instead of two or more (the
// kernel's read-ahead starts at 32 KiB), at the cost of a copy of the
// rest, which a reader of the file's head only does not need.
const StoreMaxBytes = 128 << 10

// storeRest hands the kernel the file's bytes from `from` to its end
// (FUSE notify store) when they are all local, before the READ that read
// its head is answered: the kernel then finds them cached and sends no
// READ for them. Bytes that are not all local are left to READ requests;
// so is a refusal by the kernel. The pages the kernel's read-ahead locked
// for this READ end before `from`; a concurrent reader's READ of the rest
// is answered by another of go-fuse's readers meanwhile.
func (i *inode) storeRest(from int64) {
	bp, _ := i.t.storeBufs.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, StoreMaxBytes)
		bp = &b
	}
	defer i.t.storeBufs.Put(bp)
	rest := (*bp)[:i.n.size-from]
	if i.t.local.ReadLocal(i.t.readCtx, rest, i.n.offset+from) {
		_ = i.WriteCache(from, rest) // refused: READ requests fetch the rest
	}
}

// Statfs describes the layer: its data blocks and inodes, nothing free.
func (i *inode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	i.logOp("statfs", "")
	*out = fuse.StatfsOut{
		Blocks:  i.t.blocks,
		Files:   i.t.files,
		Bsize:   blockSize,
		Frsize:  blockSize,
		NameLen: maxNameLen,
	}
	return 0
}

// logOp logs an operation on the node (on its child name, for a lookup)
// when the tree logs operations (Options.OperationLog).
func (i *inode) logOp(op, child string) {
	if i.t.opLog == nil {
		return
	}
	p := "/" + i.Path(nil)
	if child != "" {
		p = path.Join(p, child)
	}
	i.t.opLog.WithField("operation", op).WithField("path", p).Debug("FUSE operation")
}
