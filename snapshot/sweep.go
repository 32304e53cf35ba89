package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"

	"github.com/fastsoci/soci-snapshotter/internal/staging"
)

// sweep runs at start-up, before remote snapshots are restored, and undoes
// what a process killed at any point (docs/architecture.md, "Crash
// consistency") may have left under the snapshots directory: dead FUSE
// mounts (their server is gone: ENOTCONN) are detached wherever they are,
// and the snapshot directories that no snapshot owns (a crash between a
// directory's creation and its record's commit, or between a record's
// removal and its directory's) are detached and deleted, as Cleanup does.
// Live mounts of snapshots that exist are left alone: a FUSE server outside
// this process may still serve them. Failures are logged; start-up goes on.
func (s *Snapshotter) sweep(ctx context.Context) {
	if n, err := detachDead(s.snapshotsDir()); err != nil {
		log.G(ctx).WithError(err).Warn("start-up sweep: could not detach every dead mount")
	} else if n > 0 {
		log.G(ctx).WithField("mounts", n).Info("start-up sweep: detached dead FUSE mounts")
	}
	if err := s.Cleanup(ctx); err != nil {
		log.G(ctx).WithError(err).Warn("start-up sweep: could not delete orphan snapshot directories")
	}
	// Parallel pull's staging (layers being downloaded and unpacked) of
	// dead processes, also when parallel pull is off now.
	if n, err := staging.Sweep(s.PullStagingDir(), time.Now()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("start-up sweep: could not delete parallel pull staging")
	} else if n > 0 {
		log.G(ctx).WithField("entries", n).Info("start-up sweep: deleted parallel pull staging of dead processes")
	}
}

// PullStagingDir is where parallel pull stages layers (pull.Options
// StagingDir): on the snapshots' filesystem, so that a layer moves into its
// snapshot by a rename.
func (s *Snapshotter) PullStagingDir() string { return PullStagingDir(s.root) }

// PullStagingDir is the staging directory of parallel pull for the
// snapshotter rooted at root.
func PullStagingDir(root string) string { return filepath.Join(root, "pull") }

// detachDead lazily unmounts every mount under dir that can't be looked at
// because its FUSE server died, deepest first, and returns how many.
func detachDead(dir string) (int, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return 0, fmt.Errorf("read mount table: %w", err)
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	var (
		n    int
		errs []error
	)
	for _, m := range mounts {
		if m.Mountpoint == dir || !dead(m.Mountpoint) {
			continue
		}
		if err := syscall.Unmount(m.Mountpoint, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("detach %s: %w", m.Mountpoint, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// dead tells whether path is a FUSE mount whose server is gone. statfs
// always asks the server, where stat may be answered from the kernel's
// attribute cache even after the server died.
func dead(path string) bool {
	var st syscall.Statfs_t
	err := syscall.Statfs(path, &st)
	return errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED)
}
