package snapshot

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/continuity/fs/fstest"
)

// TestMountTwoLayerChain builds two layers, the second deleting and changing
// files of the first, mounts a view of the chain with mount.All and checks
// that it shows the merged tree: no deleted file, no whiteout, and nothing
// writable. It runs on local layers only, and again on top of a remote layer.
func TestMountTwoLayerChain(t *testing.T) {
	requireRoot(t)
	lower := fstest.Apply(
		fstest.CreateFile("/keep", []byte("kept\n"), 0o644),
		fstest.CreateFile("/change", []byte("old\n"), 0o644),
		fstest.CreateFile("/delete", []byte("gone\n"), 0o644),
		fstest.CreateDir("/dir", 0o755),
		fstest.CreateFile("/dir/delete", []byte("gone\n"), 0o644),
	)
	upper := fstest.Apply(
		fstest.CreateFile("/change", []byte("new\n"), 0o644),
		fstest.Remove("/delete"),
		fstest.Remove("/dir/delete"),
		fstest.CreateFile("/dir/added", []byte("added\n"), 0o600),
	)

	t.Run("Local", func(t *testing.T) {
		ctx, sn, work := mountEnv(t, nil)
		commitLayer(ctx, t, sn, work, "layer1", "", lower)
		commitLayer(ctx, t, sn, work, "layer2", "layer1", upper)
		checkView(ctx, t, sn, work, "layer2", fstest.Apply(lower, upper))
	})
	t.Run("RemoteLower", func(t *testing.T) {
		fake := newFakeMounter()
		ctx, sn, work := mountEnv(t, fake)
		// The fake layer holds one file, /layer, naming the layer.
		if _, err := sn.Prepare(ctx, "extract-layer1", "", snapshots.WithLabels(layerLabels("layer1"))); err == nil {
			t.Fatal("remote Prepare: want already exists")
		}
		remote := fstest.CreateFile("/layer", []byte("layer1"), 0o644)
		commitLayer(ctx, t, sn, work, "layer2", "layer1", lower)
		commitLayer(ctx, t, sn, work, "layer3", "layer2", upper)
		checkView(ctx, t, sn, work, "layer3", fstest.Apply(remote, lower, upper))
	})
}

func mountEnv(t *testing.T, m Mounter) (context.Context, *Snapshotter, string) {
	ctx := testContext(t)
	root := tempRoot(t)
	sn, err := New(ctx, Options{Root: filepath.Join(root, "sn"), Mounter: m})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { sn.Close() })
	work := filepath.Join(root, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	return ctx, sn, work
}

// commitLayer prepares a snapshot on parent, mounts it, applies a and commits
// the result as name.
func commitLayer(ctx context.Context, t *testing.T, sn *Snapshotter, work, name, parent string, a fstest.Applier) {
	t.Helper()
	key := "prepare-" + name
	mounts, err := sn.Prepare(ctx, key, parent)
	if err != nil {
		t.Fatalf("Prepare %s: %v", name, err)
	}
	target := filepath.Join(work, name)
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := mount.All(mounts, target); err != nil {
		t.Fatalf("mount %s: %v", name, err)
	}
	applyErr := a.Apply(target)
	if err := mount.UnmountAll(target, 0); err != nil {
		t.Fatalf("unmount %s: %v", name, err)
	}
	if applyErr != nil {
		t.Fatalf("apply %s: %v", name, applyErr)
	}
	if err := sn.Commit(ctx, name, key); err != nil {
		t.Fatalf("Commit %s: %v", name, err)
	}
}

// checkView mounts a view of parent and compares it with want.
func checkView(ctx context.Context, t *testing.T, sn *Snapshotter, work, parent string, want fstest.Applier) {
	t.Helper()
	mounts, err := sn.View(ctx, "view", parent)
	if err != nil {
		t.Fatalf("View: %v", err)
	}
	target := filepath.Join(work, "view")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := mount.All(mounts, target); err != nil {
		t.Fatalf("mount view: %v", err)
	}
	defer func() {
		if err := mount.UnmountAll(target, 0); err != nil {
			t.Errorf("unmount view: %v", err)
		}
	}()
	if err := fstest.CheckDirectoryEqualWithApplier(target, want); err != nil {
		t.Errorf("view differs from the merged layers: %v", err)
	}
	err = os.WriteFile(filepath.Join(target, "new"), nil, 0o644)
	if !errors.Is(err, syscall.EROFS) {
		t.Errorf("write into view: want EROFS, got %v", err)
	}
}
