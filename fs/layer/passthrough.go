package layer

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/containerd/log"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// FUSE passthrough (Linux 6.9 and later): the kernel reads a file straight
// from a backing file the FUSE server registered, with no READ request.
// The kernel reads the backing file at the offsets of the FUSE file, so the
// backing file must hold exactly the file's bytes from offset 0; a span of
// the cache holds a piece of the tar stream instead. A file whose bytes are
// all in the span cache (each span verified against its zTOC digest when it
// was stored) is therefore copied into an unnamed file (O_TMPFILE) on the
// cache's file system, kept open in BackingFiles, and handed to the kernel.
// Nothing else is ever copied there: the copy reads the cache only, never
// the registry, and gives up at the first span that is not cached.
//
// Passthrough needs OPEN answered (the backing id travels in its reply),
// so a layer with passthrough no longer uses FUSE no_open: every open costs
// an OPEN and a RELEASE request.

// LocalReader reads the layer's uncompressed stream from what is local
// only: ReadLocal fills p from off and reports whether every byte was
// cached. It never fetches.
type LocalReader interface {
	ReadLocal(ctx context.Context, p []byte, off int64) bool
	// Has reports, without reading, whether [off, off+n) is likely
	// local (ReadLocal has the last word).
	Has(ctx context.Context, off, n int64) bool
}

// Passthrough turns FUSE passthrough on for one layer (Options.Passthrough).
type Passthrough struct {
	// Files keeps the copies, node-wide.
	Files *BackingFiles
	// Local reads the layer's cached bytes.
	Local LocalReader
	// Refused, when not nil, is called once if the kernel refuses
	// passthrough on the mount (Probe).
	Refused func(err error)
	// Opened, when not nil, is called for each answered open with whether
	// it offered the kernel a backing file.
	Opened func(passthrough bool)
}

// passthrough is a tree's passthrough state.
type passthrough struct {
	Passthrough
	on      atomic.Bool // the mount passed Probe
	refused atomic.Bool // the kernel refused: the mount goes back to no_open
	bad     atomic.Bool // refused, or the layer was found bad: no new passthrough
}

// minPassthroughSize is the smallest file opened with passthrough. A
// smaller file is read in one or two READ requests, fewer than passthrough
// costs (making, registering and dropping its backing file).
const minPassthroughSize = 64 << 10

// passthroughWorth reports whether a layer of these entries gets
// passthrough: when at least a quarter of its regular files are of
// minPassthroughSize or more. Passthrough makes every open of the layer
// cost an OPEN and a RELEASE request, while only those files can gain;
// a layer of small files keeps FUSE no_open.
func passthroughWorth(entries []Entry) bool {
	var files, big int
	for i := range entries {
		if entries[i].Type == TypeReg {
			files++
			if entries[i].Size >= minPassthroughSize {
				big++
			}
		}
	}
	return big > 0 && 4*big >= files
}

// syncCopyMax is the largest file copied during its OPEN; larger files are
// copied in the background and served through FUSE meanwhile.
const syncCopyMax = 8 << 20

// copyChunk is the size of each read of the cache while copying.
const copyChunk = 1 << 20

// ProbePassthrough checks that the kernel accepts backing files on the
// mount served by server: the init reply must have enabled passthrough, and
// registering a backing file must work (it needs CAP_SYS_ADMIN and a
// backing file system that does not stack too deep). It turns passthrough
// on for the layer root when it does; otherwise opens stay normal reads
// and Passthrough.Refused is told. A root without passthrough is left alone.
func ProbePassthrough(root fusefs.InodeEmbedder, server *fuse.Server) error {
	i, ok := root.(*inode)
	if !ok || i.t.pass == nil {
		return nil
	}
	p := i.t.pass
	err := probe(server, p.Files)
	if err != nil {
		p.bad.Store(true)
		p.refused.Store(true)
		if p.Refused != nil {
			p.Refused(err)
		}
		return err
	}
	p.on.Store(true)
	return nil
}

func probe(server *fuse.Server, files *BackingFiles) error {
	if ks := server.KernelSettings(); ks == nil || ks.Flags64()&fuse.CAP_PASSTHROUGH == 0 {
		return errors.New("the kernel did not offer FUSE passthrough (Linux 6.9 or later, CONFIG_FUSE_PASSTHROUGH)")
	}
	f, err := files.tmpfile()
	if err != nil {
		return err
	}
	defer f.Close()
	id, errno := server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(f.Fd())})
	if errno != 0 {
		return fmt.Errorf("register a backing file: %w", errno)
	}
	if errno := server.UnregisterBackingFd(id); errno != 0 {
		return fmt.Errorf("unregister the probe's backing file: %w", errno)
	}
	return nil
}

// openPassthrough answers an OPEN of a regular file of a layer with
// passthrough. The kernel refuses (EIO to the caller) a passthrough open of
// an inode that has files open with cached reads and the reverse, so each
// inode counts its open handles of each kind and a new open follows the
// kind already open.
func (i *inode) openPassthrough(ctx context.Context) (fusefs.FileHandle, uint32, syscall.Errno) {
	p := i.t.pass
	i.mu.Lock()
	defer i.mu.Unlock()
	switch {
	case i.passOpens > 0 && p.bad.Load():
		// The kernel would go on reading the backing file of the
		// handles open; the layer was found bad since (or the kernel
		// refused): fail the open rather than serve it.
		return nil, 0, syscall.EIO
	case i.passOpens > 0:
		// go-fuse hands out the backing id it registered for the first.
		i.passOpens++
		p.opened(true)
		return &passFile{i: i}, 0, 0
	case i.cachedOpens == 0 && p.on.Load() && !p.bad.Load() && i.n.size >= minPassthroughSize:
		if f := i.backing(ctx); f != nil {
			i.passOpens++
			p.opened(true)
			return &passFile{i: i, fd: int(f.Fd()), keep: f}, 0, 0
		}
	}
	i.cachedOpens++
	p.opened(false)
	return &cachedFile{i: i}, fuse.FOPEN_KEEP_CACHE, 0
}

func (p *passthrough) opened(pass bool) {
	if p.Opened != nil {
		p.Opened(pass)
	}
}

// backing returns a descriptor of its own (the caller closes it) of the
// copy of the file, making the copy now when the file is small enough and
// local, or starting it in the background.
func (i *inode) backing(ctx context.Context) *os.File {
	p := i.t.pass
	key := backingKey{t: i.t, ino: i.n.ino}
	if f := p.Files.get(key); f != nil {
		return f
	}
	if !p.Local.Has(ctx, i.n.offset, i.n.size) {
		return nil
	}
	if i.n.size > syncCopyMax {
		i.copyLater()
		return nil
	}
	f, err := p.Files.make(key, i.n.size, func(f *os.File) (bool, error) { return i.copyTo(ctx, f) })
	if err != nil {
		log.G(ctx).WithError(err).WithField("ino", i.n.ino).Debug("no passthrough copy of the file")
	}
	return f
}

// copyLater copies the file in the background if it is local, for later
// opens.
func (i *inode) copyLater() {
	p := i.t.pass
	if !p.on.Load() || p.bad.Load() || i.n.size < minPassthroughSize {
		return
	}
	if !p.Local.Has(i.t.readCtx, i.n.offset, i.n.size) {
		return
	}
	key := backingKey{t: i.t, ino: i.n.ino}
	p.Files.makeLater(key, i.n.size, func(f *os.File) (bool, error) { return i.copyTo(i.t.readCtx, f) })
}

// copyTo copies the file's bytes from the cache into f; false when some
// byte is not cached.
func (i *inode) copyTo(ctx context.Context, f *os.File) (bool, error) {
	buf := make([]byte, min(i.n.size, copyChunk))
	for off := int64(0); off < i.n.size; {
		b := buf[:min(int64(len(buf)), i.n.size-off)]
		if !i.t.pass.Local.ReadLocal(ctx, b, i.n.offset+off) {
			return false, nil
		}
		if _, err := f.WriteAt(b, off); err != nil {
			return false, fmt.Errorf("write the passthrough copy: %w", err)
		}
		off += int64(len(b))
	}
	return true, nil
}

// passFile is an open handle served by the kernel from a backing file.
type passFile struct {
	i    *inode
	fd   int
	keep *os.File // a descriptor of the copy of its own, until Release
}

var (
	_ fusefs.FilePassthroughFder = (*passFile)(nil)
	_ fusefs.FileReleaser        = (*passFile)(nil)
	_ fusefs.FileReleaser        = (*cachedFile)(nil)
)

// PassthroughFd is called by go-fuse once, during the OPEN, when the inode
// has no backing id yet.
func (f *passFile) PassthroughFd() (int, bool) {
	if f.keep == nil {
		return 0, false
	}
	return f.fd, true
}

func (f *passFile) Release(ctx context.Context) syscall.Errno {
	if f.keep != nil {
		f.keep.Close()
	}
	f.i.mu.Lock()
	f.i.passOpens--
	f.i.mu.Unlock()
	return 0
}

// cachedFile is an open handle whose reads come as FUSE READ requests.
type cachedFile struct{ i *inode }

func (f *cachedFile) Release(ctx context.Context) syscall.Errno {
	f.i.mu.Lock()
	f.i.cachedOpens--
	f.i.mu.Unlock()
	// Most files are read whole between open and close: copy it now
	// that its spans are likely local, for the next open.
	f.i.copyLater()
	return 0
}

// backingKey names a file of a mounted layer.
type backingKey struct {
	t   *tree
	ino uint64
}

// BackingFiles keeps the copies of local files that passthrough opens hand
// to the kernel: unnamed files in Dir (their space is freed when the last
// descriptor closes, so a crash leaves nothing behind), at most MaxBytes
// and maxBackingFiles of them, least recently used closed first. Closing
// one never disturbs an open file: the kernel holds its own reference
// while it uses it. Background copies (after a file read through FUSE is
// closed) wait in a bounded queue for one worker.
type BackingFiles struct {
	dir      string
	maxBytes int64
	jobs     chan copyJob
	start    sync.Once
	done     chan struct{}
	stop     sync.Once

	mu      sync.Mutex
	entries map[backingKey]*list.Element
	lru     list.List                    // of *backingEntry, most recent first
	busy    map[backingKey]chan struct{} // being copied; closed when done
	queued  map[backingKey]bool          // waiting for the worker
	bytes   int64
}

// copyJob is a background copy.
type copyJob struct {
	key  backingKey
	size int64
	fill func(*os.File) (bool, error)
}

const (
	// maxBackingFiles bounds the copies kept (each holds a descriptor).
	maxBackingFiles = 8192
	// copyQueue bounds the background copies waiting; more are dropped
	// (the file is copied at its next open instead).
	copyQueue = 4096
)

type backingEntry struct {
	key  backingKey
	f    *os.File
	size int64
}

// NewBackingFiles returns a store of copies in dir (which must exist, on a
// local file system that supports O_TMPFILE) of at most maxBytes.
func NewBackingFiles(dir string, maxBytes int64) *BackingFiles {
	return &BackingFiles{dir: dir, maxBytes: maxBytes, jobs: make(chan copyJob, copyQueue), done: make(chan struct{}),
		entries: map[backingKey]*list.Element{}, busy: map[backingKey]chan struct{}{}, queued: map[backingKey]bool{}}
}

// Close stops the background copies and closes every copy.
func (b *BackingFiles) Close() {
	b.stop.Do(func() { close(b.done) })
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.lru.Len() > 0 {
		b.evict(b.lru.Back())
	}
}

// work runs the background copies until Close.
func (b *BackingFiles) work() {
	for {
		select {
		case <-b.done:
			return
		case j := <-b.jobs:
			b.mu.Lock()
			delete(b.queued, j.key)
			b.mu.Unlock()
			f, err := b.make(j.key, j.size, j.fill)
			if err != nil {
				log.L.WithError(err).Debug("no passthrough copy of the file")
			}
			if f != nil {
				f.Close()
			}
		}
	}
}

func (b *BackingFiles) tmpfile() (*os.File, error) {
	fd, err := unix.Open(b.dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o400)
	if err != nil {
		return nil, fmt.Errorf("create an unnamed file in %s: %w", b.dir, err)
	}
	return os.NewFile(uintptr(fd), "passthrough"), nil
}

// get returns a new descriptor of the copy of key, or nil.
func (b *BackingFiles) get(key backingKey) *os.File {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e, ok := b.entries[key]; ok {
		b.lru.MoveToFront(e)
		return dup(e.Value.(*backingEntry).f)
	}
	return nil
}

// dup returns a descriptor of f's file of its own, or nil: an eviction may
// close f while the kernel is still to register the file.
func dup(f *os.File) *os.File {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(fd), f.Name())
}

// make copies a file of size bytes with fill into a new unnamed file, keeps
// it and returns a descriptor of its own of it; nil when fill reports the
// data not local or when the file cannot fit. A copy of the same file under
// way is waited for.
func (b *BackingFiles) make(key backingKey, size int64, fill func(*os.File) (bool, error)) (*os.File, error) {
	if size > b.maxBytes {
		return nil, nil
	}
	b.mu.Lock()
	for {
		if e, ok := b.entries[key]; ok {
			// Under the lock: an eviction may close the copy.
			f := dup(e.Value.(*backingEntry).f)
			b.mu.Unlock()
			return f, nil
		}
		wait, ok := b.busy[key]
		if !ok {
			break
		}
		// Another copy of the file is under way: its result is ours.
		b.mu.Unlock()
		<-wait
		b.mu.Lock()
	}
	done := make(chan struct{})
	b.busy[key] = done
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.busy, key)
		b.mu.Unlock()
		close(done)
	}()
	f, err := b.tmpfile()
	if err != nil {
		return nil, err
	}
	ok, err := fill(f)
	if !ok || err != nil {
		f.Close()
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if key.t.closed || key.t.pass != nil && key.t.pass.bad.Load() {
		f.Close()
		return nil, nil
	}
	for (b.bytes+size > b.maxBytes || b.lru.Len() >= maxBackingFiles) && b.lru.Len() > 0 {
		b.evict(b.lru.Back())
	}
	b.entries[key] = b.lru.PushFront(&backingEntry{key: key, f: f, size: size})
	b.bytes += size
	return dup(f), nil
}

// makeLater queues make for the background worker unless the copy
// exists, is under way or queued, or the queue is full.
func (b *BackingFiles) makeLater(key backingKey, size int64, fill func(*os.File) (bool, error)) {
	b.mu.Lock()
	_, have := b.entries[key]
	_, busy := b.busy[key]
	if have || busy || b.queued[key] || size > b.maxBytes {
		b.mu.Unlock()
		return
	}
	b.queued[key] = true
	b.mu.Unlock()
	b.start.Do(func() { go b.work() })
	select {
	case b.jobs <- copyJob{key: key, size: size, fill: fill}:
	default:
		b.mu.Lock()
		delete(b.queued, key)
		b.mu.Unlock()
	}
}

// evict closes the copy of e; b.mu is held.
func (b *BackingFiles) evict(e *list.Element) {
	be := b.lru.Remove(e).(*backingEntry)
	delete(b.entries, be.key)
	b.bytes -= be.size
	be.f.Close()
}

// drop closes every copy of the layer t (unmounted) and refuses new ones.
func (b *BackingFiles) drop(t *tree) {
	b.mu.Lock()
	t.closed = true
	b.mu.Unlock()
	b.dropCopies(t)
}

// dropCopies closes every copy of the layer t.
func (b *BackingFiles) dropCopies(t *tree) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for e := b.lru.Front(); e != nil; {
		next := e.Next()
		if e.Value.(*backingEntry).key.t == t {
			b.evict(e)
		}
		e = next
	}
}

// Bytes reports how many bytes the copies hold.
func (b *BackingFiles) Bytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bytes
}

// PoisonPassthrough stops passthrough on the layer of root, found to
// contradict its zTOC: its copies go, new opens read through FUSE (and
// fail as its reads do), and opens of a file that handles still read
// through a backing file fail with EIO.
func PoisonPassthrough(root fusefs.InodeEmbedder) {
	if i, ok := root.(*inode); ok && i.t.pass != nil {
		i.t.pass.bad.Store(true)
		i.t.pass.Files.dropCopies(i.t)
	}
}

// ClosePassthrough drops the passthrough copies of the layer of root, once
// it is unmounted. Later copies of it are refused.
func ClosePassthrough(root fusefs.InodeEmbedder) {
	if i, ok := root.(*inode); ok && i.t.pass != nil {
		i.t.pass.Files.drop(i.t)
	}
}
