package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/errdefs"
)

// tmpDir is the staging directory under the cache root; keys cannot name it
// because their components never start with '.'.
const tmpDir = ".tmp"

// Disk is an on-disk cache under a directory: each key is a file at its
// sanitized path. Entries are written to a temporary file under the same
// root, then renamed into place, so a reader never sees a partial entry and
// the data survives restarts. Writes are not fsynced: after a crash an entry
// may be empty or short, which readers detect by its length. One Disk (one
// process) owns a directory at a time. It is safe for concurrent use.
type Disk struct {
	dir string
	tmp string
}

// NewDisk opens (creating it if needed) the cache under dir and removes
// temporary files left by an interrupted Put.
func NewDisk(dir string) (*Disk, error) {
	if dir == "" {
		return nil, fmt.Errorf("open disk cache: empty directory: %w", errdefs.ErrInvalidArgument)
	}
	tmp := filepath.Join(dir, tmpDir)
	if err := os.RemoveAll(tmp); err != nil {
		return nil, fmt.Errorf("open disk cache %s: clear temporary files: %w", dir, err)
	}
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("open disk cache %s: %w", dir, err)
	}
	return &Disk{dir: dir, tmp: tmp}, nil
}

func (d *Disk) path(key string) (string, error) {
	p, err := keyPath(key)
	if err != nil {
		return "", err
	}
	return filepath.Join(d.dir, filepath.FromSlash(p)), nil
}

// notFound reports whether err means the entry does not exist.
func notFound(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// Get returns the entry for key; a miss wraps errdefs.ErrNotFound.
func (d *Disk) Get(key string) ([]byte, error) {
	p, err := d.path(key)
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
	return data, nil
}

// GetAt reads part of the entry for key with the io.ReaderAt contract (io.EOF
// when the entry ends before b is full); a miss wraps errdefs.ErrNotFound.
func (d *Disk) GetAt(key string, b []byte, off int64) (int, error) {
	p, err := d.path(key)
	if err != nil {
		return 0, fmt.Errorf("get cache entry: %w", err)
	}
	f, err := os.Open(p)
	if notFound(err) {
		return 0, fmt.Errorf("get cache entry %q: %w", key, errdefs.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("get cache entry %q: %w", key, err)
	}
	defer f.Close()
	return f.ReadAt(b, off)
}

// Put stores data under key, replacing any previous entry atomically.
// Concurrent Puts of one key are safe: the last rename wins.
func (d *Disk) Put(key string, data []byte) error {
	p, err := d.path(key)
	if err != nil {
		return fmt.Errorf("put cache entry: %w", err)
	}
	tmp, err := d.writeTemp(data)
	if err != nil {
		return fmt.Errorf("put cache entry %q: %w", key, err)
	}
	if err := d.place(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("put cache entry %q: %w", key, err)
	}
	return nil
}

// writeTemp writes data to a new temporary file and returns its path.
func (d *Disk) writeTemp(data []byte) (string, error) {
	f, err := os.CreateTemp(d.tmp, "put-*")
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// place renames tmp to p, creating p's directory. It retries once when a
// concurrent Remove deleted the directory in between.
func (d *Disk) place(tmp, p string) error {
	var err error
	for range 2 {
		if err = os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		if err = os.Rename(tmp, p); !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return err
}

// Remove drops the entry prefix and every entry under it (all spans of a
// layer, given the layer's key prefix). A missing prefix is not an error.
func (d *Disk) Remove(prefix string) error {
	p, err := d.path(prefix)
	if err != nil {
		return fmt.Errorf("remove cache entries: %w", err)
	}
	if err := os.RemoveAll(p); err != nil {
		return fmt.Errorf("remove cache entries %q: %w", prefix, err)
	}
	return nil
}
