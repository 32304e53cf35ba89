package snapshot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	continuityfs "github.com/containerd/continuity/fs"
	"github.com/containerd/log"

	"github.com/fastsoci/soci-snapshotter/internal/crash"
)

// Prepare creates an active snapshot on top of parent and returns its mounts.
// With TargetRefLabel among the labels and a Mounter configured, it first
// tries to serve the layer lazily; see the package documentation.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return nil, fmt.Errorf("prepare snapshot %q: %w", key, err)
		}
	}
	if target, ok := base.Labels[TargetRefLabel]; ok && (s.mounter != nil || s.puller != nil) {
		return s.prepareRemote(ctx, key, parent, target, base.Labels, opts)
	}
	return s.create(ctx, snapshots.KindActive, key, parent, opts)
}

// View creates a read-only snapshot of parent and returns its mounts.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.create(ctx, snapshots.KindView, key, parent, opts)
}

// create records a new snapshot, makes sure the remote layers below it are
// served and returns its mounts.
func (s *Snapshotter) create(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) ([]mount.Mount, error) {
	snap, chain, err := s.createRecord(ctx, kind, key, parent, opts)
	if err != nil {
		return nil, err
	}
	return s.activate(ctx, key, snap, chain)
}

// activate readies a freshly created snapshot for use and returns its mounts:
// the remote layers below it must be served, and the upper directory of an
// active snapshot takes the owner of the layer below. On failure the snapshot
// is removed again, so that the failed call leaves nothing behind.
func (s *Snapshotter) activate(ctx context.Context, key string, snap storage.Snapshot, chain []remoteLayer) ([]mount.Mount, error) {
	err := s.ensureLayers(ctx, chain)
	if err == nil && snap.Kind == snapshots.KindActive && len(snap.ParentIDs) > 0 {
		err = copyOwner(s.upperPath(snap.ParentIDs[0]), s.upperPath(snap.ID))
	}
	if err != nil {
		s.discard(ctx, key)
		return nil, fmt.Errorf("ready %v snapshot %q: %w", snap.Kind, key, err)
	}
	return s.mounts(snap), nil
}

// createRecord adds the snapshot to the metadata store and creates its
// directory, both in one transaction: the directory is built under a
// temporary name and renamed to the snapshot's ID just before the commit. It
// also returns the remote layers among the snapshot's parents.
func (s *Snapshotter) createRecord(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt) (snap storage.Snapshot, chain []remoteLayer, err error) {
	var tmp, final string
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		var err error
		if tmp, err = s.makeTempDir(kind); err != nil {
			return err
		}
		if snap, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...); err != nil {
			return err
		}
		if chain, err = s.remoteChain(ctx, parent); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(s.snapshotsDir(), snap.ID)); err != nil {
			return fmt.Errorf("move snapshot directory into place: %w", err)
		}
		tmp, final = "", filepath.Join(s.snapshotsDir(), snap.ID)
		crash.Point(crash.RecordBeforeCommit)
		return nil
	})
	if err != nil {
		// Either the directory never got its final name, or the transaction
		// failed after the rename: in both cases no snapshot owns it.
		for _, dir := range []string{tmp, final} {
			if dir == "" {
				continue
			}
			if rerr := os.RemoveAll(dir); rerr != nil {
				log.G(ctx).WithError(rerr).WithField("path", dir).Warn("leaving snapshot directory for a later cleanup")
			}
		}
		return storage.Snapshot{}, nil, fmt.Errorf("create %v snapshot %q on %q: %w", kind, key, parent, err)
	}
	return snap, chain, nil
}

// makeTempDir builds a snapshot directory under a temporary name.
func (s *Snapshotter) makeTempDir(kind snapshots.Kind) (string, error) {
	tmp, err := os.MkdirTemp(s.snapshotsDir(), "new-")
	if err != nil {
		return "", fmt.Errorf("create snapshot directory: %w", err)
	}
	if err := os.Mkdir(filepath.Join(tmp, "fs"), 0o755); err != nil {
		return tmp, fmt.Errorf("create snapshot directory: %w", err)
	}
	if kind == snapshots.KindActive {
		if err := os.Mkdir(filepath.Join(tmp, "work"), 0o711); err != nil {
			return tmp, fmt.Errorf("create snapshot directory: %w", err)
		}
	}
	return tmp, nil
}

// copyOwner gives dst the owner of src. The root of an overlay mount takes
// its owner from the upper directory, so a new upper directory must keep the
// owner of the layer below it.
func copyOwner(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("stat parent layer: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("stat parent layer %s: no owner information", src)
	}
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("give snapshot directory its parent's owner: %w", err)
	}
	return nil
}

// Commit turns the active snapshot key into the committed snapshot name.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	// Measure the layer before taking the write transaction: walking a big
	// layer must not block every other writer.
	id, err := s.snapshotID(ctx, key)
	if err != nil {
		return fmt.Errorf("commit snapshot %q as %q: %w", key, name, err)
	}
	usage, err := continuityfs.DiskUsage(ctx, s.upperPath(id))
	if err != nil {
		return fmt.Errorf("commit snapshot %q as %q: measure usage: %w", key, name, err)
	}
	crash.Point(crash.CommitBeforeCommit)
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		current, _, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if current != id {
			// The key was removed and prepared again meanwhile.
			if usage, err = continuityfs.DiskUsage(ctx, s.upperPath(current)); err != nil {
				return fmt.Errorf("measure usage: %w", err)
			}
		}
		_, err = storage.CommitActive(ctx, key, name, snapshots.Usage(usage), opts...)
		return err
	})
	if err != nil {
		return fmt.Errorf("commit snapshot %q as %q: %w", key, name, err)
	}
	crash.Point(crash.CommitAfterCommit)
	return nil
}

// snapshotID returns the ID of the snapshot named key.
func (s *Snapshotter) snapshotID(ctx context.Context, key string) (string, error) {
	var id string
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		id, _, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return id, err
}

// discard removes a snapshot that a failed call created; failures are only
// logged since the caller already reports the original error.
func (s *Snapshotter) discard(ctx context.Context, key string) {
	if err := s.Remove(ctx, key); err != nil {
		log.G(ctx).WithError(err).WithField("key", key).Warn("could not remove snapshot after a failed call")
	}
}
