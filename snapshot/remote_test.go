package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

// remoteEnv is a snapshotter with a fake Mounter under a temporary root.
type remoteEnv struct {
	t    *testing.T
	ctx  context.Context
	root string
	fake *fakeMounter
	sn   *Snapshotter
}

func newRemoteEnv(t *testing.T) *remoteEnv {
	t.Helper()
	requireRoot(t)
	e := &remoteEnv{t: t, ctx: testContext(t), root: tempRoot(t), fake: newFakeMounter()}
	e.open(e.fake, false)
	return e
}

// open starts the snapshotter (again) on the env's root.
func (e *remoteEnv) open(m Mounter, allowInvalid bool) {
	e.t.Helper()
	sn, err := New(e.ctx, Options{Root: e.root, Mounter: m, AllowInvalidMountsOnRestart: allowInvalid})
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	e.sn = sn
	e.t.Cleanup(func() { sn.Close() })
}

// layerLabels are the labels containerd passes when unpacking layer ref.
func layerLabels(ref string) map[string]string {
	return map[string]string{
		TargetRefLabel:                            ref,
		"containerd.io/snapshot/cri.image-ref":    "registry.example/app:1",
		"containerd.io/snapshot/cri.layer-digest": "sha256:" + ref,
	}
}

// prepareRemote runs containerd's unpack Prepare of layer ref on parent and
// expects the layer to be served remotely. It returns the mountpoint.
func (e *remoteEnv) prepareRemote(ref, parent string) string {
	e.t.Helper()
	key := "extract-" + ref
	_, err := e.sn.Prepare(e.ctx, key, parent, snapshots.WithLabels(layerLabels(ref)))
	if !errdefs.IsAlreadyExists(err) {
		e.t.Fatalf("Prepare %s: want already exists, got %v", ref, err)
	}
	return e.mountpoint(ref)
}

// mountpoint returns the fs directory of snapshot name.
func (e *remoteEnv) mountpoint(name string) string {
	e.t.Helper()
	id, err := e.sn.snapshotID(e.ctx, name)
	if err != nil {
		e.t.Fatalf("id of %s: %v", name, err)
	}
	return e.sn.upperPath(id)
}

func (e *remoteEnv) assertMounted(mp string, want bool) {
	e.t.Helper()
	got, err := isMountPoint(mp)
	if err != nil {
		e.t.Fatalf("isMountPoint %s: %v", mp, err)
	}
	if got != want {
		e.t.Fatalf("%s mounted = %v, want %v", mp, got, want)
	}
}

func TestRemotePrepareCommitsTarget(t *testing.T) {
	e := newRemoteEnv(t)
	mp := e.prepareRemote("layer1", "")

	info, err := e.sn.Stat(e.ctx, "layer1")
	if err != nil {
		t.Fatalf("Stat target: %v", err)
	}
	if info.Kind != snapshots.KindCommitted {
		t.Fatalf("target kind = %v, want committed", info.Kind)
	}
	for k, v := range layerLabels("layer1") {
		if info.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, info.Labels[k], v)
		}
	}
	if info.Labels[RemoteLabel] == "" {
		t.Errorf("target lacks %s: %v", RemoteLabel, info.Labels)
	}
	if _, err := e.sn.Stat(e.ctx, "extract-layer1"); !errdefs.IsNotFound(err) {
		t.Errorf("Stat active key: want not found, got %v", err)
	}
	e.assertMounted(mp, true)
	if got, _ := os.ReadFile(filepath.Join(mp, "layer")); string(got) != "layer1" {
		t.Errorf("layer file = %q", got)
	}

	// A second unpack of the same layer stops before mounting anything.
	_, err = e.sn.Prepare(e.ctx, "extract-again", "", snapshots.WithLabels(layerLabels("layer1")))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second Prepare: want already exists, got %v", err)
	}
	if _, err := e.sn.Stat(e.ctx, "extract-again"); !errdefs.IsNotFound(err) {
		t.Errorf("second Prepare left its key: %v", err)
	}
	if n := len(e.fake.calls); n != 1 {
		t.Errorf("Mounter calls = %v, want one mount", e.fake.calls)
	}
}

func TestRemoteUpdateKeepsMarker(t *testing.T) {
	e := newRemoteEnv(t)
	e.prepareRemote("layer1", "")
	// A full label update, as containerd sends with its inherited labels.
	info, err := e.sn.Update(e.ctx, snapshots.Info{Name: "layer1", Labels: map[string]string{"a": "b"}})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	if info.Labels["a"] != "b" || info.Labels[RemoteLabel] == "" {
		t.Fatalf("labels after update = %v", info.Labels)
	}
}

func TestRemoteFallbackNotFound(t *testing.T) {
	e := newRemoteEnv(t)
	e.fake.mountErr = func(string, map[string]string) error {
		return fmt.Errorf("no SOCI index: %w", errdefs.ErrNotFound)
	}
	testFallback(t, e)
}

func TestRemoteFallbackOtherError(t *testing.T) {
	e := newRemoteEnv(t)
	e.fake.mountErr = func(string, map[string]string) error { return errors.New("registry unreachable") }
	// The failing Mount leaves its tmpfs and a file behind.
	e.fake.halfMount = true
	testFallback(t, e)
}

// testFallback expects Prepare to hand out an ordinary active snapshot with
// an empty, unmounted upper directory.
func testFallback(t *testing.T, e *remoteEnv) {
	t.Helper()
	mounts, err := e.sn.Prepare(e.ctx, "extract-layer1", "", snapshots.WithLabels(layerLabels("layer1")))
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	mp := e.mountpoint("extract-layer1")
	if len(mounts) != 1 || mounts[0].Type != "bind" || mounts[0].Source != mp {
		t.Fatalf("mounts = %+v, want a bind mount of %s", mounts, mp)
	}
	if _, err := e.sn.Stat(e.ctx, "layer1"); !errdefs.IsNotFound(err) {
		t.Fatalf("Stat target: want not found, got %v", err)
	}
	info, err := e.sn.Stat(e.ctx, "extract-layer1")
	if err != nil || info.Kind != snapshots.KindActive {
		t.Fatalf("Stat active: %+v, %v", info, err)
	}
	e.assertMounted(mp, false)
	if entries, _ := os.ReadDir(mp); len(entries) != 0 {
		t.Fatalf("upper directory not empty: %v", entries)
	}
	// containerd unpacks and commits as usual.
	if err := os.WriteFile(filepath.Join(mp, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.sn.Commit(e.ctx, "layer1", "extract-layer1"); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

func TestRemoteRemoveUnmounts(t *testing.T) {
	e := newRemoteEnv(t)
	mp := e.prepareRemote("layer1", "")
	if err := e.sn.Remove(e.ctx, "layer1"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if e.fake.count("unmount", mp) != 1 {
		t.Errorf("calls = %v, want an unmount of %s", e.fake.calls, mp)
	}
	if _, err := os.Stat(filepath.Dir(mp)); !os.IsNotExist(err) {
		t.Errorf("snapshot directory still there: %v", err)
	}
	if e.fake.count("release", mp) != 1 || len(e.fake.releasedEarly) != 0 {
		t.Errorf("calls = %v, released early = %v; want one release of %s once its directory is gone",
			e.fake.calls, e.fake.releasedEarly, mp)
	}
}

// TestRemoteRemoveWithoutReleaser: a Mounter without Release is only
// unmounted.
func TestRemoteRemoveWithoutReleaser(t *testing.T) {
	e := newRemoteEnv(t)
	e.sn.Close()
	e.open(mounterOnly{e.fake}, false)
	mp := e.prepareRemote("layer1", "")
	if err := e.sn.Remove(e.ctx, "layer1"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if e.fake.count("unmount", mp) != 1 || e.fake.count("release", mp) != 0 {
		t.Errorf("calls = %v, want an unmount and no release of %s", e.fake.calls, mp)
	}
	if _, err := os.Stat(filepath.Dir(mp)); !os.IsNotExist(err) {
		t.Errorf("snapshot directory still there: %v", err)
	}
}

func TestRemoteCleanupDetachesOrphans(t *testing.T) {
	e := newRemoteEnv(t)
	mp := e.prepareRemote("layer1", "")
	// The fake loses track of the mount, as after a crash: Remove's unmount
	// does nothing and the directory must still not be deleted through it.
	e.fake.mu.Lock()
	delete(e.fake.mounted, mp)
	e.fake.mu.Unlock()
	if err := e.sn.Remove(e.ctx, "layer1"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if err := e.sn.Cleanup(e.ctx); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if left := mountsBelow(t, e.root); len(left) != 0 {
		t.Fatalf("mounts left: %v", left)
	}
	if entries, _ := os.ReadDir(e.sn.snapshotsDir()); len(entries) != 0 {
		t.Fatalf("directories left: %v", entries)
	}
	if e.fake.count("release", mp) != 1 || len(e.fake.releasedEarly) != 0 {
		t.Errorf("calls = %v, released early = %v; want one release of %s once its directory is gone",
			e.fake.calls, e.fake.releasedEarly, mp)
	}
}

// twoRemoteLayers serves layer1 and layer2 (on layer1) remotely.
func (e *remoteEnv) twoRemoteLayers() (mp1, mp2 string) {
	return e.prepareRemote("layer1", ""), e.prepareRemote("layer2", "layer1")
}

func TestRemoteMountsChecksParents(t *testing.T) {
	e := newRemoteEnv(t)
	mp1, mp2 := e.twoRemoteLayers()
	if _, err := e.sn.Prepare(e.ctx, "container", "layer2"); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if e.fake.count("check", mp1) != 1 || e.fake.count("check", mp2) != 1 {
		t.Fatalf("calls = %v, want Prepare to check both layers", e.fake.calls)
	}

	e.fake.kill(mp1)
	if _, err := e.sn.Mounts(e.ctx, "container"); err != nil {
		t.Fatalf("Mounts with a dead layer: %v", err)
	}
	if e.fake.count("mount", mp1) != 2 || e.fake.count("mount", mp2) != 1 {
		t.Fatalf("calls = %v, want %s mounted again, %s left alone", e.fake.calls, mp1, mp2)
	}

	e.fake.kill(mp2)
	e.fake.mountErr = func(string, map[string]string) error { return errors.New("registry gone") }
	_, err := e.sn.Mounts(e.ctx, "container")
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "layer2") {
		t.Fatalf("Mounts with a layer that can't be mounted: want unavailable naming layer2, got %v", err)
	}
}

func TestRemotePrepareOnDeadLayerFails(t *testing.T) {
	e := newRemoteEnv(t)
	mp := e.prepareRemote("layer1", "")
	e.fake.kill(mp)
	e.fake.mountErr = func(string, map[string]string) error { return errors.New("registry gone") }
	if _, err := e.sn.View(e.ctx, "view", "layer1"); !errdefs.IsUnavailable(err) {
		t.Fatalf("View: want unavailable, got %v", err)
	}
	// The failed call leaves no snapshot behind.
	if _, err := e.sn.Stat(e.ctx, "view"); !errdefs.IsNotFound(err) {
		t.Fatalf("Stat view: want not found, got %v", err)
	}
}

func TestRemoteLayersAsLowerDirs(t *testing.T) {
	e := newRemoteEnv(t)
	mp1, mp2 := e.twoRemoteLayers()
	wantLower := "lowerdir=" + mp2 + ":" + mp1

	view, err := e.sn.View(e.ctx, "view", "layer2")
	if err != nil {
		t.Fatalf("View: %v", err)
	}
	assertOverlay(t, view, wantLower, false)

	active, err := e.sn.Prepare(e.ctx, "container", "layer2")
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	assertOverlay(t, active, wantLower, true)

	// A view of one remote layer is a read-only bind mount of it.
	one, err := e.sn.View(e.ctx, "view1", "layer1")
	if err != nil {
		t.Fatalf("View: %v", err)
	}
	if len(one) != 1 || one[0].Type != "bind" || one[0].Source != mp1 || !slices.Contains(one[0].Options, "ro") {
		t.Fatalf("view of one layer = %+v", one)
	}
}

// assertOverlay checks a single overlay mount with the given lowerdir option
// and, if upper, an upper and a work directory.
func assertOverlay(t *testing.T, mounts []mount.Mount, lowerdir string, upper bool) {
	t.Helper()
	if len(mounts) != 1 || mounts[0].Type != "overlay" {
		t.Fatalf("mounts = %+v, want one overlay", mounts)
	}
	opts := mounts[0].Options
	if !slices.Contains(opts, lowerdir) {
		t.Errorf("options %v lack %s", opts, lowerdir)
	}
	hasUpper := slices.ContainsFunc(opts, func(o string) bool { return strings.HasPrefix(o, "upperdir=") })
	hasWork := slices.ContainsFunc(opts, func(o string) bool { return strings.HasPrefix(o, "workdir=") })
	if hasUpper != upper || hasWork != upper {
		t.Errorf("options %v: upperdir/workdir present = %v/%v, want %v", opts, hasUpper, hasWork, upper)
	}
}

func TestRemoteConcurrentPrepareSameLayer(t *testing.T) {
	e := newRemoteEnv(t)
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			key := fmt.Sprintf("extract-%d", i)
			_, errs[i] = e.sn.Prepare(e.ctx, key, "", snapshots.WithLabels(layerLabels("layer1")))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if !errdefs.IsAlreadyExists(err) {
			t.Errorf("Prepare %d: want already exists, got %v", i, err)
		}
	}
	var names []string
	if err := e.sn.Walk(e.ctx, func(_ context.Context, info snapshots.Info) error {
		names = append(names, info.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"layer1"}) {
		t.Fatalf("snapshots = %v, want only layer1", names)
	}
	if left := mountsBelow(t, e.root); len(left) != 1 {
		t.Fatalf("mounts = %v, want just the one layer", left)
	}
}
