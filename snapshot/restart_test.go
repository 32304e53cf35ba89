package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
)

func TestRemoteRestartRemounts(t *testing.T) {
	e := newRemoteEnv(t)
	mp1, mp2 := e.twoRemoteLayers()
	if err := e.sn.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Close leaves the layers mounted.
	e.assertMounted(mp1, true)
	e.assertMounted(mp2, true)

	// A new process knows none of the mounts: both are mounted again.
	restarted := newFakeMounter()
	e.open(restarted, false)
	for _, mp := range []string{mp1, mp2} {
		if restarted.count("mount", mp) != 1 {
			t.Errorf("calls = %v, want a mount of %s", restarted.calls, mp)
		}
		e.assertMounted(mp, true)
	}
}

func TestRemoteRestartLeavesLiveMounts(t *testing.T) {
	e := newRemoteEnv(t)
	mp1, mp2 := e.twoRemoteLayers()
	e.sn.Close()
	// The filesystem took over the old mounts, so they pass their checks,
	// and a Mount would fail: start-up must not try it.
	adopting := newFakeMounter()
	adopting.adopt = true
	adopting.mountErr = func(string, map[string]string) error { return errors.New("must not mount") }
	e.open(adopting, false)
	for _, mp := range []string{mp1, mp2} {
		if adopting.count("mount", mp) != 0 || adopting.count("check", mp) != 1 {
			t.Errorf("calls = %v, want one check of %s and no mount", adopting.calls, mp)
		}
	}
}

func TestRemoteRestartFailures(t *testing.T) {
	e := newRemoteEnv(t)
	mp1, mp2 := e.twoRemoteLayers()
	e.sn.Close()
	failing := func() *fakeMounter {
		f := newFakeMounter()
		f.mountErr = func(mp string, _ map[string]string) error {
			if mp == mp1 {
				return errors.New("zTOC lost")
			}
			return nil
		}
		return f
	}

	strict := failing()
	if _, err := New(e.ctx, Options{Root: e.root, Mounter: strict}); err == nil {
		t.Fatal("New with an invalid remote snapshot: want error")
	}
	// Start-up failed: the layer it had mounted is unmounted again.
	if strict.count("unmount", mp2) != 1 || strict.count("release", mp2) != 0 {
		t.Errorf("calls = %v, want an unmount and no release of %s", strict.calls, mp2)
	}

	tolerant := failing()
	e.open(tolerant, true)
	if tolerant.count("mount", mp2) == 0 {
		t.Errorf("calls = %v, want a mount of %s", tolerant.calls, mp2)
	}
	if _, err := e.sn.Stat(e.ctx, "layer1"); err != nil {
		t.Errorf("invalid snapshot must be left in place: %v", err)
	}
}

// A layer the Mounter declines on purpose (found bad, or no longer to be
// served lazily) must not stop start-up, even without
// allow_invalid_mounts_on_restart: an image must never keep the daemon down.
func TestRemoteRestartSkipsDeclinedLayers(t *testing.T) {
	for _, class := range []error{errdefs.ErrFailedPrecondition, errdefs.ErrNotFound} {
		t.Run(class.Error(), func(t *testing.T) {
			e := newRemoteEnv(t)
			mp1, mp2 := e.twoRemoteLayers()
			e.sn.Close()
			declining := newFakeMounter()
			declining.mountErr = func(mp string, _ map[string]string) error {
				if mp == mp1 {
					return fmt.Errorf("layer found bad: %w", class)
				}
				return nil
			}
			e.open(declining, false)
			if declining.count("mount", mp2) != 1 {
				t.Errorf("calls = %v, want a mount of %s", declining.calls, mp2)
			}
			e.assertMounted(mp2, true)
			if _, err := e.sn.Stat(e.ctx, "layer1"); err != nil {
				t.Errorf("declined snapshot must be left in place: %v", err)
			}
		})
	}
}

// TestRemoteRestartLocalOnly: the restore at start-up asks the Mounter for
// local-only mounts (never wait for a registry); a Prepare during normal
// operation does not.
func TestRemoteRestartLocalOnly(t *testing.T) {
	e := newRemoteEnv(t)
	mp1, mp2 := e.twoRemoteLayers()
	if len(e.fake.localCalls) != 0 {
		t.Errorf("Prepare made local-only calls: %v", e.fake.localCalls)
	}
	e.sn.Close()
	restarted := newFakeMounter()
	e.open(restarted, false)
	for _, mp := range []string{mp1, mp2} {
		for _, call := range []string{"check " + mp, "mount " + mp} {
			if !slices.Contains(restarted.localCalls, call) {
				t.Errorf("restore: %q not local-only (local-only calls: %v)", call, restarted.localCalls)
			}
		}
	}
}

// TestStartSweepsOrphans: directories a crash left in the snapshots
// directory without a snapshot (a half-created one with a temporary name,
// one whose record was never committed or already removed, with a mount in
// it) are detached and deleted on start; the snapshots that exist stay.
func TestStartSweepsOrphans(t *testing.T) {
	e := newRemoteEnv(t)
	mp1, mp2 := e.twoRemoteLayers()
	e.sn.Close()
	snapshots := filepath.Join(e.root, "snapshots")
	orphans := []string{filepath.Join(snapshots, "new-123"), filepath.Join(snapshots, "9999")}
	for _, o := range orphans {
		if err := os.MkdirAll(filepath.Join(o, "fs"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mounted := filepath.Join(orphans[1], "fs")
	if err := syscall.Mount("tmpfs", mounted, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	e.open(newFakeMounter(), false)
	for _, o := range orphans {
		if _, err := os.Lstat(o); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("orphan %s left after start (%v)", o, err)
		}
	}
	for _, mp := range []string{mp1, mp2} {
		e.assertMounted(mp, true)
	}
}

// TestStartDetachesDeadMounts: a FUSE mount whose server died (here: its
// /dev/fuse descriptor closed before any answer) on a snapshot's directory
// is detached on start, so that the snapshot's directory can be looked at
// again; a live mount on an existing snapshot is left alone.
func TestStartDetachesDeadMounts(t *testing.T) {
	requireRoot(t)
	e := newRemoteEnv(t)
	_, err := e.sn.Prepare(e.ctx, "active", "")
	if err != nil {
		t.Fatal(err)
	}
	mp1, _ := e.twoRemoteLayers()
	upper := e.mountpoint("active")
	e.sn.Close()
	deadFUSE(t, upper)
	if !dead(upper) {
		t.Skip("could not make a dead FUSE mount on this host")
	}
	adopting := newFakeMounter()
	adopting.adopt = true
	e.open(adopting, false)
	if mounted, err := isMountPoint(upper); err != nil || mounted {
		t.Errorf("dead FUSE mount on %s not detached (mounted %v, %v)", upper, mounted, err)
	}
	if adopting.count("mount", mp1) != 0 {
		t.Errorf("live layer %s mounted again: %v", mp1, adopting.calls)
	}
	e.assertMounted(mp1, true)
}

// deadFUSE mounts a FUSE filesystem at mp and closes its device at once:
// the kernel then answers ENOTCONN for it, as after its server was killed.
func deadFUSE(t *testing.T, mp string) {
	t.Helper()
	fd, err := syscall.Open("/dev/fuse", syscall.O_RDWR, 0)
	if err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0", fd)
	if err := syscall.Mount("deadfuse", mp, "fuse", syscall.MS_NOSUID|syscall.MS_NODEV, opts); err != nil {
		syscall.Close(fd)
		t.Skipf("mount fuse: %v", err)
	}
	syscall.Close(fd)
}
