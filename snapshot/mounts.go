package snapshot

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
)

// Mounts returns the mounts of the active or view snapshot key, after making
// sure that the remote layers below it are still served.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var (
		snap  storage.Snapshot
		chain []remoteLayer
	)
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		if snap, err = storage.GetSnapshot(ctx, key); err != nil {
			return err
		}
		_, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		chain, err = s.remoteChain(ctx, info.Parent)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("mounts of snapshot %q: %w", key, err)
	}
	if err := s.ensureLayers(ctx, chain); err != nil {
		return nil, fmt.Errorf("mounts of snapshot %q: %w", key, err)
	}
	return s.mounts(snap), nil
}

// mounts describes how to mount a snapshot:
//   - no parent: a bind mount of its own directory (read-only for a view);
//   - a view of one layer: a read-only bind mount of that layer;
//   - otherwise overlayfs with the parents as lower directories, newest
//     first, and for an active snapshot its own upper and work directories.
//
// A view on two or more layers is an overlay without upper directory, which
// overlayfs mounts read-only.
func (s *Snapshotter) mounts(snap storage.Snapshot) []mount.Mount {
	if len(snap.ParentIDs) == 0 {
		mode := "rw"
		if snap.Kind == snapshots.KindView {
			mode = "ro"
		}
		return []mount.Mount{{
			Type:    "bind",
			Source:  s.upperPath(snap.ID),
			Options: []string{mode, "rbind"},
		}}
	}
	if snap.Kind == snapshots.KindView && len(snap.ParentIDs) == 1 {
		return []mount.Mount{{
			Type:    "bind",
			Source:  s.upperPath(snap.ParentIDs[0]),
			Options: []string{"ro", "rbind"},
		}}
	}
	var options []string
	if snap.Kind == snapshots.KindActive {
		options = append(options,
			"workdir="+s.workPath(snap.ID),
			"upperdir="+s.upperPath(snap.ID),
		)
	}
	lowers := make([]string, len(snap.ParentIDs))
	for i, id := range snap.ParentIDs {
		lowers[i] = s.upperPath(id)
	}
	options = append(options, "lowerdir="+strings.Join(lowers, ":"))
	options = append(options, s.overlayOptions...)
	return []mount.Mount{{
		Type:    "overlay",
		Source:  "overlay",
		Options: options,
	}}
}
