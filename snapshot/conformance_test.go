package snapshot

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
)

// TestConformance runs containerd's snapshotter conformance suite, once
// without Mounter and once with one (no test there asks for remote layers, so
// the answers must be the same).
//
// The suite is told the snapshotter is "overlayfs": that name tells it that
// renaming a directory of a lower layer is not expected to work, which is
// true of overlayfs unless the kernel enables redirect_dir.
func TestConformance(t *testing.T) {
	requireRoot(t)
	t.Run("NoMounter", func(t *testing.T) {
		testsuite.SnapshotterSuite(t, "overlayfs", newForSuite(false))
	})
	t.Run("WithMounter", func(t *testing.T) {
		testsuite.SnapshotterSuite(t, "overlayfs", newForSuite(true))
	})
}

func newForSuite(withMounter bool) testsuite.SnapshotterFunc {
	return func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		opts := Options{Root: root}
		if withMounter {
			opts.Mounter = newFakeMounter()
		}
		sn, err := New(ctx, opts)
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	}
}
