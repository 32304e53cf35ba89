package snapshot

import (
	"errors"
	"fmt"
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
