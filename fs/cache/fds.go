package cache

import (
	"container/list"
	"os"
	"sync"
)

// DefaultMaxOpenFiles is how many entry files a Disk keeps open for reads
// when DiskOptions.MaxOpenFiles is 0 ([directory_cache] max_cache_fds).
const DefaultMaxOpenFiles = 128

// fds keeps entry files open for reads, so that a read of a cached span is
// one pread instead of open, read and close: at most max files, the least
// recently used closed first. A file in use by a reader when it is dropped
// (evicted from the set, or its entry replaced, evicted or removed) is closed
// by its last reader. It is safe for concurrent use; its lock is held for
// map and list updates only, never across I/O.
type fds struct {
	max int

	mu    sync.Mutex
	byKey map[string]*openFile // by cache key
	lru   list.List            // of *openFile, most recently used in front
	// gen counts drops: a file opened while a drop ran may be a name that
	// the drop moved away, so it is used once and not kept.
	gen uint64
}

// openFile is one kept file. refs counts the readers using f; a dropped
// file is closed when refs falls to 0.
type openFile struct {
	f       *os.File
	key     string
	rel     string // key path, to match drops by prefix
	refs    int
	dropped bool
	elem    *list.Element
}

func newFDs(max int) *fds {
	return &fds{max: max, byKey: map[string]*openFile{}}
}

// get returns the kept file of key, or nil. The caller releases it.
func (c *fds) get(key string) *openFile {
	c.mu.Lock()
	defer c.mu.Unlock()
	o := c.byKey[key]
	if o == nil {
		return nil
	}
	o.refs++
	c.lru.MoveToFront(o.elem)
	return o
}

// generation returns the drop count, taken before opening a file for add.
func (c *fds) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// add keeps f, opened at key path rel after generation returned gen, and
// returns it in use by the caller (who releases it). When a drop ran since
// gen, or the set keeps no files, f is returned for this use only (closed at
// release). When another reader kept key meanwhile, f is closed and theirs
// returned.
func (c *fds) add(key, rel string, f *os.File, gen uint64) *openFile {
	c.mu.Lock()
	if c.gen != gen || c.max <= 0 {
		c.mu.Unlock()
		return &openFile{f: f, key: key, rel: rel, refs: 1, dropped: true}
	}
	if o := c.byKey[key]; o != nil {
		o.refs++
		c.lru.MoveToFront(o.elem)
		c.mu.Unlock()
		f.Close()
		return o
	}
	o := &openFile{f: f, key: key, rel: rel, refs: 1}
	o.elem = c.lru.PushFront(o)
	c.byKey[key] = o
	var closing []*os.File
	for c.lru.Len() > c.max {
		if f := c.dropLocked(c.lru.Back().Value.(*openFile)); f != nil {
			closing = append(closing, f)
		}
	}
	c.mu.Unlock()
	closeFiles(closing)
	return o
}

// release ends a use of o, closing it when it was dropped and this was its
// last reader.
func (c *fds) release(o *openFile) {
	c.mu.Lock()
	o.refs--
	last := o.dropped && o.refs == 0
	c.mu.Unlock()
	if last {
		o.f.Close()
	}
}

// drop forgets the files of the entries at or under key path rel and closes
// those no reader uses; the others are closed by their last reader. Callers
// drop after the names changed (a rename or removal), so that a file opened
// before is dropped and one opened after cannot be the old entry.
func (c *fds) drop(rel string) {
	c.mu.Lock()
	c.gen++
	var closing []*os.File
	for _, o := range c.byKey {
		if under(o.rel, rel) {
			if f := c.dropLocked(o); f != nil {
				closing = append(closing, f)
			}
		}
	}
	c.mu.Unlock()
	closeFiles(closing)
}

// dropLocked forgets o and returns its file when nobody uses it (for the
// caller to close outside mu). Callers hold mu.
func (c *fds) dropLocked(o *openFile) *os.File {
	delete(c.byKey, o.key)
	c.lru.Remove(o.elem)
	o.dropped = true
	if o.refs == 0 {
		return o.f
	}
	return nil
}

// closeAll closes every kept file no reader uses; the others are closed by
// their last reader.
func (c *fds) closeAll() {
	c.mu.Lock()
	c.gen++
	var closing []*os.File
	for _, o := range c.byKey {
		if f := c.dropLocked(o); f != nil {
			closing = append(closing, f)
		}
	}
	c.mu.Unlock()
	closeFiles(closing)
}

// kept reports how many files are kept open.
func (c *fds) kept() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.byKey)
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
