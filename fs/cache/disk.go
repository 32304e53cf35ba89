package cache

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"

	"github.com/fastsoci/soci-snapshotter/internal/crash"
	"github.com/fastsoci/soci-snapshotter/internal/staging"
)

// tmpDir holds the staging directories under the cache root (see
// internal/staging): one per process using the cache. Keys cannot name it
// because their components never start with '.'.
const tmpDir = ".tmp"

// Disk is an on-disk cache under a directory: each key is a file at its
// sanitized path. Entries are written to a temporary file in the process's
// own staging directory under the same root, then renamed into place, so a
// reader never sees a partial entry and the data survives restarts. Writes
// are not fsynced: after a crash an entry may be empty or short, which
// readers detect by its length. Several processes may share a directory (an
// upgrade): opening one never deletes another live process's staging
// directory, only those of processes that died. Each process accounts
// what it sees at open and what it writes itself. It is safe for
// concurrent use.
//
// A Disk keeps the bytes of its entries accounted in memory, by group (the
// directory of an entry: a layer, for span keys), rebuilt by a directory walk
// when it is opened. With a size bound, a Put that would exceed it first
// evicts whole groups, least recently used first: groups not pinned (layers
// not mounted) before pinned ones, never the group being written.
type Disk struct {
	dir     string
	staging *staging.Dir
	max     int64 // bound of the accounted bytes; 0: unbounded

	// mu guards the accounting and every change to the cache's names
	// (renames into place, evictions, removals), so the accounting matches
	// the directory. File contents are written and read outside it.
	mu    sync.Mutex
	usage *usage
	trash uint64 // sequence for names of evicted groups in staging

	// fds keeps entry files open for GetAt.
	fds *fds

	// reads are the groups read since the accounting last took them
	// (group path -> order of the last read), so that a read never waits
	// for mu, which Put and Remove hold across renames. touchMu guards
	// them and readSeq.
	touchMu sync.Mutex
	reads   map[string]uint64
	readSeq uint64

	// writeFile writes a temporary file; tests replace it to fake a full disk.
	writeFile func(f *os.File, data []byte) (int, error)
}

// DiskOptions configure a Disk.
type DiskOptions struct {
	// MaxBytes bounds the bytes of all entries; 0 or less is unbounded.
	MaxBytes int64
	// MaxOpenFiles bounds the entry files kept open for reads (GetAt),
	// least recently used closed first: 0 takes DefaultMaxOpenFiles, a
	// negative value keeps none open (each read opens and closes its file).
	MaxOpenFiles int
}

// ErrFull is wrapped by Put's error when an entry does not fit in the size
// bound even after evicting every other group, or the disk is full.
var ErrFull = errors.New("span cache full")

// NewDisk opens (creating it if needed) an unbounded cache under dir and
// removes the staging directories of processes that died.
func NewDisk(dir string) (*Disk, error) {
	return OpenDisk(dir, DiskOptions{})
}

// OpenDisk opens (creating it if needed) the cache under dir, removes the
// staging directories of processes that died (what an interrupted Put,
// eviction or Remove left: see internal/staging), makes its own, and
// accounts the entries on disk. Entries beyond opts.MaxBytes are evicted by
// the next Put.
func OpenDisk(dir string, opts DiskOptions) (*Disk, error) {
	if dir == "" {
		return nil, fmt.Errorf("open disk cache: empty directory: %w", errdefs.ErrInvalidArgument)
	}
	st, err := staging.Open(filepath.Join(dir, tmpDir))
	if err != nil {
		return nil, fmt.Errorf("open disk cache %s: %w", dir, err)
	}
	u := newUsage()
	if err := u.rebuild(dir); err != nil {
		st.Close()
		return nil, fmt.Errorf("open disk cache %s: account entries: %w", dir, err)
	}
	fdMax := opts.MaxOpenFiles
	if fdMax == 0 {
		fdMax = DefaultMaxOpenFiles
	}
	d := &Disk{dir: dir, staging: st, max: max(opts.MaxBytes, 0), usage: u, fds: newFDs(fdMax), reads: map[string]uint64{}, writeFile: (*os.File).Write}
	return d, nil
}

// Close closes the entry files kept open and deletes the cache's staging
// directory; the entries stay. No Put, Remove or GetAt may be under way or
// follow.
func (d *Disk) Close() error {
	d.fds.closeAll()
	return d.staging.Close()
}

// Size returns the bytes of all entries and the size bound (0: unbounded).
func (d *Disk) Size() (bytes, bound int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.usage.total, d.max
}

// Pin protects the entries under prefix (a layer's key prefix) from
// eviction but as a last resort, until a matching Unpin. Pins nest.
func (d *Disk) Pin(prefix string) error {
	p, err := keyPath(prefix)
	if err != nil {
		return fmt.Errorf("pin cache entries: %w", err)
	}
	d.mu.Lock()
	d.usage.pins[p]++
	d.mu.Unlock()
	return nil
}

// Unpin undoes one Pin of prefix.
func (d *Disk) Unpin(prefix string) {
	p, err := keyPath(prefix)
	if err != nil {
		return
	}
	d.mu.Lock()
	if d.usage.pins[p]--; d.usage.pins[p] <= 0 {
		delete(d.usage.pins, p)
	}
	d.mu.Unlock()
}

func (d *Disk) path(key string) (rel, full string, err error) {
	rel, err = keyPath(key)
	if err != nil {
		return "", "", err
	}
	return rel, filepath.Join(d.dir, filepath.FromSlash(rel)), nil
}

// notFound reports whether err means the entry does not exist.
func notFound(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// touch marks the group of the entry at rel as just used: noted now,
// accounted by the next eviction (takeReads).
func (d *Disk) touch(rel string) {
	g, _ := split(rel)
	d.touchMu.Lock()
	d.readSeq++
	d.reads[g] = d.readSeq
	d.touchMu.Unlock()
}

// takeReads accounts the groups read since the last call as used, in the
// order of their last reads; each Put calls it first, so reads and Puts
// keep their order for the eviction. Callers hold mu.
func (d *Disk) takeReads() {
	d.touchMu.Lock()
	reads := d.reads
	if len(reads) == 0 {
		d.touchMu.Unlock()
		return
	}
	d.reads = make(map[string]uint64, len(reads))
	d.touchMu.Unlock()
	groups := make([]string, 0, len(reads))
	for g := range reads {
		groups = append(groups, g)
	}
	slices.SortFunc(groups, func(a, b string) int { return cmp.Compare(reads[a], reads[b]) })
	for _, g := range groups {
		d.usage.touchGroup(g)
	}
}

// Get returns the entry for key; a miss wraps errdefs.ErrNotFound.
func (d *Disk) Get(key string) ([]byte, error) {
	rel, p, err := d.path(key)
	if err != nil {
		return nil, fmt.Errorf("get cache entry: %w", err)
	}
	data, err := os.ReadFile(p)
	if notFound(err) {
		return nil, fmt.Errorf("get cache entry %q: %w", key, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get cache entry %q: %w", key, err)
	}
	d.touch(rel)
	return data, nil
}

// GetAt reads part of the entry for key with the io.ReaderAt contract (io.EOF
// when the entry ends before b is full); a miss wraps errdefs.ErrNotFound.
// The entry's file stays open for later reads (see DiskOptions.MaxOpenFiles):
// a read of a kept file is one pread, without path work or allocation.
func (d *Disk) GetAt(key string, b []byte, off int64) (int, error) {
	o := d.fds.get(key)
	if o == nil {
		rel, p, err := d.path(key)
		if err != nil {
			return 0, fmt.Errorf("get cache entry: %w", err)
		}
		gen := d.fds.generation()
		f, err := os.Open(p)
		if notFound(err) {
			return 0, fmt.Errorf("get cache entry %q: %w", key, errdefs.ErrNotFound)
		}
		if err != nil {
			return 0, fmt.Errorf("get cache entry %q: %w", key, err)
		}
		o = d.fds.add(key, rel, f, gen)
	}
	n, err := o.f.ReadAt(b, off)
	d.fds.release(o)
	d.touch(o.rel)
	return n, err
}

// Put stores data under key, replacing any previous entry atomically.
// Concurrent Puts of one key are safe: the last rename wins. With a size
// bound, groups are evicted first to make room; an entry that does not fit
// even then, or a full disk, gives an error wrapping ErrFull and leaves the
// cache as it was.
func (d *Disk) Put(key string, data []byte) error {
	rel, p, err := d.path(key)
	if err != nil {
		return fmt.Errorf("put cache entry: %w", err)
	}
	tmp, err := d.writeTemp(data)
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			err = fmt.Errorf("%w: %w", ErrFull, err)
		}
		return fmt.Errorf("put cache entry %q: %w", key, err)
	}
	crash.Point(crash.CachePutBeforeRename)
	d.mu.Lock()
	d.takeReads() // the reads before this Put are older than it
	evicted, err := d.makeRoom(rel, int64(len(data)))
	if err == nil {
		err = d.place(tmp, p)
	}
	if err == nil {
		d.usage.add(rel, int64(len(data)))
		d.fds.drop(rel) // a kept file of the key is the entry replaced
	}
	d.mu.Unlock()
	d.discard(evicted)
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put cache entry %q: %w", key, err)
	}
	return nil
}

// makeRoom evicts groups until n bytes for the entry at rel fit in the
// bound and returns the evicted groups' new paths for discard. Callers hold
// mu.
func (d *Disk) makeRoom(rel string, n int64) ([]string, error) {
	if d.max <= 0 {
		return nil, nil
	}
	own, _ := split(rel)
	if kept := d.usage.groups[own]; kept != nil && kept.bytes-d.usage.size(rel)+n > d.max || n > d.max {
		return nil, fmt.Errorf("%d bytes do not fit in the bound of %d bytes with the rest of their group: %w", n, d.max, ErrFull)
	}
	var evicted []string
	for d.usage.total-d.usage.size(rel)+n > d.max {
		g, ok := d.usage.victim(rel)
		if !ok {
			return evicted, fmt.Errorf("%d bytes do not fit in the bound of %d bytes (%d used): %w", n, d.max, d.usage.total, ErrFull)
		}
		if moved := d.evict(g); moved != "" {
			evicted = append(evicted, moved)
		}
	}
	return evicted, nil
}

// evict moves the group (or any entry) at rel out of the cache's names and
// drops its accounting. It returns where it moved it (for discard), or ""
// when there was nothing to move. Callers hold mu.
func (d *Disk) evict(rel string) string {
	d.usage.forget(rel)
	d.trash++
	to := filepath.Join(d.staging.Path(), "evict-"+strconv.FormatUint(d.trash, 10))
	if err := os.Rename(filepath.Join(d.dir, filepath.FromSlash(rel)), to); err != nil {
		return ""
	}
	d.fds.drop(rel) // closed before discard deletes them
	return to
}

// discard deletes evicted entries, outside mu.
func (d *Disk) discard(paths []string) {
	for _, p := range paths {
		os.RemoveAll(p)
	}
}

// writeTemp writes data to a new temporary file and returns its path. The
// file is removed on any failure (a full disk, say).
func (d *Disk) writeTemp(data []byte) (string, error) {
	f, err := d.staging.CreateTemp("put-*")
	if err != nil {
		return "", err
	}
	_, err = d.writeFile(f, data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// place renames tmp to p, creating p's directory. Callers hold mu.
func (d *Disk) place(tmp, p string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// Remove drops the entry prefix and every entry under it (all spans of a
// layer, given the layer's key prefix). A missing prefix is not an error.
func (d *Disk) Remove(prefix string) error {
	rel, p, err := d.path(prefix)
	if err != nil {
		return fmt.Errorf("remove cache entries: %w", err)
	}
	d.mu.Lock()
	d.usage.forget(rel)
	d.trash++
	to := filepath.Join(d.staging.Path(), "remove-"+strconv.FormatUint(d.trash, 10))
	err = os.Rename(p, to)
	if err == nil {
		d.fds.drop(rel) // closed before the files are deleted
	}
	d.mu.Unlock()
	switch {
	case err == nil:
		crash.Point(crash.CacheRemoveBeforeDelete)
		err = os.RemoveAll(to)
	case notFound(err):
		return nil
	default:
		// Not movable (another filesystem mounted there?): delete in
		// place, then close the files kept open, which a read may have
		// reopened until they were gone.
		d.fds.drop(rel)
		err = os.RemoveAll(p)
		d.fds.drop(rel)
	}
	if err != nil {
		return fmt.Errorf("remove cache entries %q: %w", prefix, err)
	}
	return nil
}
