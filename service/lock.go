package service

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// rootLock is an exclusive lock on the daemon's root directory, so that a
// second daemon given the same --root fails at once instead of waiting on
// the metadata database.
type rootLock struct {
	f *os.File
}

func lockRoot(root string) (*rootLock, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("create root directory %s: %w", root, err)
	}
	path := filepath.Join(root, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open root lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("root %s is in use by another daemon", root)
		}
		return nil, fmt.Errorf("lock root %s: %w", root, err)
	}
	return &rootLock{f: f}, nil
}

func (l *rootLock) release() error {
	return l.f.Close()
}
