package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/fastsoci/soci-snapshotter/internal/errclass"
)

// fakePuller writes one file into the directory, or fails with err.
type fakePuller struct {
	err   error
	calls int
}

func (f *fakePuller) Pull(_ context.Context, dir, _, chainID string, _ []string, _ map[string]string) error {
	f.calls++
	if f.err != nil {
		return f.err
	}
	return os.WriteFile(filepath.Join(dir, "pulled"), []byte(chainID), 0o644)
}

func newPullEnv(t *testing.T, m Mounter, p Puller, all bool) *remoteEnv {
	t.Helper()
	requireRoot(t)
	e := &remoteEnv{t: t, ctx: testContext(t), root: tempRoot(t), fake: newFakeMounter()}
	sn, err := New(e.ctx, Options{Root: e.root, Mounter: m, Puller: p, PullAll: all})
	if err != nil {
		t.Fatal(err)
	}
	e.sn = sn
	t.Cleanup(func() { sn.Close() })
	return e
}

func TestPullAllCommitsLocalLayer(t *testing.T) {
	fp := &fakePuller{}
	fm := newFakeMounter()
	e := newPullEnv(t, fm, fp, true)
	_, err := e.sn.Prepare(e.ctx, "extract-l1", "", snapshots.WithLabels(layerLabels("l1")))
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("Prepare: %v, want AlreadyExists", err)
	}
	if len(fm.calls) != 0 {
		t.Fatal("the Mounter was asked with parallel pull primary")
	}
	info, err := e.sn.Stat(e.ctx, "l1")
	if err != nil || info.Kind != snapshots.KindCommitted {
		t.Fatalf("Stat l1: %+v, %v", info, err)
	}
	if _, remote := info.Labels[RemoteLabel]; remote {
		t.Fatal("a pulled layer is labelled remote")
	}
	if b, err := os.ReadFile(filepath.Join(e.mountpoint("l1"), "pulled")); err != nil || string(b) != "l1" {
		t.Fatalf("pulled content: %q, %v", b, err)
	}
	if _, err := e.sn.Stat(e.ctx, "extract-l1"); !errdefs.IsNotFound(err) {
		t.Fatalf("active snapshot left: %v", err)
	}
}

func TestPullFailureLeavesNoSnapshot(t *testing.T) {
	fp := &fakePuller{err: errors.New("layer sha256:l1: digest mismatch")}
	e := newPullEnv(t, nil, fp, true)
	_, err := e.sn.Prepare(e.ctx, "extract-l1", "", snapshots.WithLabels(layerLabels("l1")))
	if err == nil || errdefs.IsAlreadyExists(err) || errdefs.IsNotFound(err) {
		t.Fatalf("Prepare with a failing pull: %v", err)
	}
	n := 0
	e.sn.Walk(e.ctx, func(context.Context, snapshots.Info) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d snapshots left after a failed pull", n)
	}
	dirs, _ := os.ReadDir(filepath.Join(e.root, "snapshots"))
	if len(dirs) != 0 {
		t.Fatalf("%d snapshot directories left", len(dirs))
	}
}

func TestPullNotFoundGoesToContainerd(t *testing.T) {
	fp := &fakePuller{err: fmt.Errorf("foreign layer: %w", errdefs.ErrNotFound)}
	e := newPullEnv(t, nil, fp, true)
	mounts, err := e.sn.Prepare(e.ctx, "extract-l1", "", snapshots.WithLabels(layerLabels("l1")))
	if err != nil || len(mounts) == 0 {
		t.Fatalf("Prepare: %v, %v; want mounts for containerd to unpack into", mounts, err)
	}
}

func TestPullAsFallbackOnlyWithoutIndex(t *testing.T) {
	fp := &fakePuller{}
	fm := newFakeMounter()
	fm.mountErr = func(string, map[string]string) error { return fmt.Errorf("no zTOC for layer: %w", errdefs.ErrNotFound) }
	e := newPullEnv(t, fm, fp, false)
	if mounts, err := e.sn.Prepare(e.ctx, "extract-l1", "", snapshots.WithLabels(layerLabels("l1"))); err != nil || len(mounts) == 0 {
		t.Fatalf("layer without zTOC: %v, %v; want containerd to unpack it", mounts, err)
	}
	if fp.calls != 0 {
		t.Fatal("a layer of an indexed image went to parallel pull")
	}
	fm.mountErr = func(string, map[string]string) error {
		return fmt.Errorf("%s for image manifest sha256:m: %w", NoIndexMessage, errdefs.ErrNotFound)
	}
	if _, err := e.sn.Prepare(e.ctx, "extract-l2", "", snapshots.WithLabels(layerLabels("l2"))); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("layer of an image without index: %v, want AlreadyExists", err)
	}
	if fp.calls != 1 {
		t.Fatalf("parallel pull called %d times", fp.calls)
	}
	// What fs/index says now: the class, whatever the words.
	fm.mountErr = func(string, map[string]string) error {
		return fmt.Errorf("image sha256:m: %w", errclass.ErrNoIndex)
	}
	if _, err := e.sn.Prepare(e.ctx, "extract-l3", "", snapshots.WithLabels(layerLabels("l3"))); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("layer of an image without index (class): %v, want AlreadyExists", err)
	}
	if fp.calls != 2 {
		t.Fatalf("parallel pull called %d times", fp.calls)
	}
}
