// Package staging gives each process its own directory for files being
// written before they are renamed into a store shared by several processes
// (the span cache and the index store under <root>/fs, which the daemon and
// FUSE hosts of different versions may use at once during an upgrade).
//
// A staging directory is <parent>/s-<random>, flock'ed by its owner for as
// long as it lives. Open first sweeps the parent: a staging directory whose
// lock is free belongs to a process that died (kill -9, power cut) and is
// deleted with what it holds; one whose lock is held is another live
// process's and is left alone. Entries of the parent that are not staging
// directories were left by versions that staged straight into the parent;
// they are deleted once older than LegacyAge, so that an older process
// still writing one does not lose it.
package staging

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// prefix starts the name of every staging directory.
const prefix = "s-"

// LegacyAge is how old an entry of the parent that is not a staging
// directory must be before a sweep deletes it.
const LegacyAge = time.Hour

// Dir is one process's staging directory. It is safe for concurrent use.
type Dir struct {
	parent string
	mu     sync.Mutex
	path   string
	lock   *os.File // the directory itself, flock'ed
}

// Open sweeps parent (creating it if needed; see Sweep) and creates this
// process's staging directory in it.
func Open(parent string) (*Dir, error) {
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, fmt.Errorf("staging under %s: %w", parent, err)
	}
	if _, err := Sweep(parent, time.Now()); err != nil {
		return nil, err
	}
	d := &Dir{parent: parent}
	if err := d.create(); err != nil {
		return nil, err
	}
	return d, nil
}

// create makes and locks a new staging directory. A sweeper may lock and
// delete the directory between its creation and our lock: the lock is
// then on a deleted directory, which create notices and starts over.
func (d *Dir) create() error {
	if err := os.MkdirAll(d.parent, 0o700); err != nil {
		return fmt.Errorf("staging under %s: %w", d.parent, err)
	}
	for range 8 {
		path, err := os.MkdirTemp(d.parent, prefix)
		if err != nil {
			return fmt.Errorf("create staging directory under %s: %w", d.parent, err)
		}
		f, err := os.Open(path)
		if err != nil {
			continue // swept already
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return fmt.Errorf("lock staging directory %s: %w", path, err)
		}
		if same(f, path) {
			d.path, d.lock = path, f
			return nil
		}
		f.Close()
	}
	return fmt.Errorf("create staging directory under %s: swept away again and again", d.parent)
}

// same tells whether the open file f is still what path names.
func same(f *os.File, path string) bool {
	held, err := f.Stat()
	if err != nil {
		return false
	}
	now, err := os.Lstat(path)
	return err == nil && os.SameFile(held, now)
}

// Path returns the staging directory.
func (d *Dir) Path() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.path
}

// CreateTemp creates a new file in the staging directory, as os.CreateTemp
// does. If the directory is gone (an older version cleared the parent
// wholesale), a new one is made first.
func (d *Dir) CreateTemp(pattern string) (*os.File, error) {
	path := d.Path()
	f, err := os.CreateTemp(path, pattern)
	if !errors.Is(err, fs.ErrNotExist) {
		return f, err
	}
	d.mu.Lock()
	if d.path == path {
		old := d.lock
		if err := d.create(); err != nil {
			d.mu.Unlock()
			return nil, err
		}
		old.Close()
	}
	path = d.path
	d.mu.Unlock()
	return os.CreateTemp(path, pattern)
}

// WriteFile writes data to path through a synced temporary file in the
// staging directory and a rename, so that readers see the old content, the
// new one, or nothing, and a crash leaves at most a file in a staging
// directory that a later Sweep deletes. beforeRename, when not nil, runs
// between the two (a crash point). path's directory is created (0700).
func (d *Dir) WriteFile(path string, data []byte, beforeRename func()) (err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := d.CreateTemp("put-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if beforeRename != nil {
		beforeRename()
	}
	return os.Rename(f.Name(), path)
}

// Close deletes the staging directory and what it holds, and releases it.
func (d *Dir) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lock == nil {
		return nil
	}
	err := os.RemoveAll(d.path)
	d.lock.Close()
	d.lock = nil
	if err != nil {
		return fmt.Errorf("remove staging directory: %w", err)
	}
	return nil
}

// Sweep deletes under parent the staging directories whose owner is gone
// (their lock is free) and the other entries older than LegacyAge at now,
// and returns how many entries it deleted. Staging directories of live
// processes are left alone.
func Sweep(parent string, now time.Time) (int, error) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return 0, fmt.Errorf("sweep staging under %s: %w", parent, err)
	}
	var (
		n    int
		errs []error
	)
	for _, e := range entries {
		path := filepath.Join(parent, e.Name())
		var removed bool
		var err error
		if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
			removed, err = sweepDir(path)
		} else {
			removed, err = sweepLegacy(path, now)
		}
		if removed {
			n++
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return n, fmt.Errorf("sweep staging under %s: %w", parent, err)
	}
	return n, nil
}

// sweepDir deletes the staging directory path if its lock is free.
func sweepDir(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil // a live process's
		}
		return false, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := os.RemoveAll(path); err != nil {
		return false, err
	}
	return true, nil
}

// sweepLegacy deletes path if it was last changed before now-LegacyAge.
func sweepLegacy(path string, now time.Time) (bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if now.Sub(fi.ModTime()) < LegacyAge {
		return false, nil
	}
	if err := os.RemoveAll(path); err != nil {
		return false, err
	}
	return true, nil
}
