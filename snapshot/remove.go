package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/fastsoci/soci-snapshotter/internal/crash"
)

// Remove deletes the snapshot key. The metadata goes in one write
// transaction, which also lists the snapshot directories no snapshot owns any
// more (this one's, and any a crash left behind). Only once that transaction
// is committed are they deleted: a failed transaction deletes nothing, and a
// directory that can't be deleted now is found again by the next Remove or
// Cleanup. A remote snapshot's layer is unmounted first, and released (see
// Releaser) once its directory is deleted.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	var (
		orphans    []string
		mountpoint string
	)
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if _, _, err := storage.Remove(ctx, key); err != nil {
			return err
		}
		if isRemote(info) && s.mounter != nil {
			mountpoint = s.upperPath(id)
		}
		orphans, err = s.orphanDirs(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("remove snapshot %q: %w", key, err)
	}
	crash.Point(crash.RemoveAfterRecord)
	if mountpoint != "" {
		if err := s.unmountLayer(ctx, mountpoint); err != nil {
			log.G(ctx).WithError(err).WithField("key", key).Warn("could not unmount remote layer of removed snapshot")
		}
	}
	s.removeDirs(ctx, orphans)
	return nil
}

// Cleanup deletes the snapshot directories that no snapshot owns.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	var orphans []string
	// A write transaction keeps every writer, and so every new snapshot
	// directory, out while the directories are listed.
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		var err error
		orphans, err = s.orphanDirs(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("clean up %s: %w", s.snapshotsDir(), err)
	}
	s.removeDirs(ctx, orphans)
	return nil
}

// orphanDirs lists the snapshot directories that belong to no snapshot. It
// must run inside a write transaction.
func (s *Snapshotter) orphanDirs(ctx context.Context) ([]string, error) {
	ids, err := storage.IDMap(ctx)
	if errdefs.IsNotFound(err) {
		// Nothing was ever stored: every directory is an orphan.
		ids, err = nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list snapshot IDs: %w", err)
	}
	entries, err := os.ReadDir(s.snapshotsDir())
	if err != nil {
		return nil, fmt.Errorf("list snapshot directories: %w", err)
	}
	var orphans []string
	for _, e := range entries {
		if _, ok := ids[e.Name()]; !ok {
			orphans = append(orphans, filepath.Join(s.snapshotsDir(), e.Name()))
		}
	}
	return orphans, nil
}

// removeDirs deletes snapshot directories, logging failures: their snapshots
// are already gone, so a later Cleanup retries.
func (s *Snapshotter) removeDirs(ctx context.Context, dirs []string) {
	for _, dir := range dirs {
		if err := s.removeDir(ctx, dir); err != nil {
			log.G(ctx).WithError(err).WithField("path", dir).Warn("leaving snapshot directory for a later cleanup")
		}
	}
}

// removeDir deletes one snapshot directory. Whatever is still mounted on its
// fs directory is unmounted first: deleting through a mount would delete the
// mounted data, or fail on a read-only layer.
func (s *Snapshotter) removeDir(ctx context.Context, dir string) error {
	if err := s.detach(ctx, filepath.Join(dir, "fs")); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	crash.Point(crash.RemoveBeforeRelease)
	s.releaseLayer(ctx, filepath.Join(dir, "fs"))
	return nil
}

// releaseLayer tells a Mounter that is also a Releaser that the snapshot
// whose fs directory was mountpoint is gone. Every deleted snapshot
// directory is announced, since an orphan's metadata no longer tells whether
// it was remote. Failures are logged: the snapshot is gone either way.
func (s *Snapshotter) releaseLayer(ctx context.Context, mountpoint string) {
	r, ok := s.mounter.(Releaser)
	if !ok {
		return
	}
	unlock := s.locks.lock(mountpoint)
	defer unlock()
	if err := r.Release(ctx, mountpoint); err != nil {
		log.G(ctx).WithError(err).WithField("mountpoint", mountpoint).Warn("could not release the layer of a removed snapshot")
	}
}

// detach makes sure nothing is mounted on path: the Mounter is asked first,
// since the mount is most likely one of its layers; what remains is detached
// from the mount table.
func (s *Snapshotter) detach(ctx context.Context, path string) error {
	mounted, err := isMountPoint(path)
	if err != nil || !mounted {
		return err
	}
	if s.mounter != nil {
		if err := s.unmountLayer(ctx, path); err != nil {
			log.G(ctx).WithError(err).WithField("path", path).Debug("Mounter did not unmount; detaching")
		}
		if mounted, err = isMountPoint(path); err != nil || !mounted {
			return err
		}
	}
	if err := syscall.Unmount(path, syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("detach mount at %s: %w", path, err)
	}
	return nil
}

// isMountPoint tells whether something is mounted on path. A FUSE mount
// whose server died can't even be looked at: that counts as mounted.
func isMountPoint(path string) (bool, error) {
	var st, parent syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		switch {
		case errors.Is(err, syscall.ENOTCONN), errors.Is(err, syscall.ECONNABORTED):
			return true, nil
		case errors.Is(err, fs.ErrNotExist):
			return false, nil
		}
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	if err := syscall.Lstat(filepath.Dir(path), &parent); err != nil {
		return false, fmt.Errorf("stat %s: %w", filepath.Dir(path), err)
	}
	if st.Dev != parent.Dev {
		return true, nil
	}
	// A bind mount from the same filesystem keeps the device number; only
	// the mount table tells.
	canonical, err := mount.CanonicalizePath(path)
	if err != nil {
		return false, fmt.Errorf("resolve %s: %w", path, err)
	}
	info, err := mount.Lookup(canonical)
	if err != nil {
		return false, fmt.Errorf("look up mount of %s: %w", path, err)
	}
	return info.Mountpoint == canonical, nil
}
