package snapshot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/containerd/log/logtest"

	"github.com/fastsoci/soci-snapshotter/internal/mountctx"
)

// fakeMounter stands for the lazy-loading filesystem. Each "layer" is a real
// tmpfs mount holding one file, /layer, whose content is the layer's chain
// ID, so that the snapshotter's handling of real mounts (unmount before
// delete, overlay lower directories) is exercised too.
type fakeMounter struct {
	mu sync.Mutex
	// mounted maps the mountpoints this fake serves to their labels.
	mounted map[string]map[string]string
	// dead lists mountpoints whose Check fails although mounted.
	dead map[string]bool
	// adopt makes Check pass for any mounted tmpfs, like a filesystem that
	// takes over the mounts of a previous process.
	adopt bool
	// mountErr, when set, decides the outcome of Mount before mounting;
	// halfMount makes a failing Mount leave its tmpfs and a file behind.
	mountErr  func(mountpoint string, labels map[string]string) error
	halfMount bool
	calls     []string
	// releasedEarly lists the mountpoints released while their snapshot
	// directory was still there.
	releasedEarly []string
	// localCalls are the calls (as in calls) whose ctx was marked
	// local-only (mountctx.WithLocalOnly).
	localCalls []string
}

var (
	_ Mounter  = (*fakeMounter)(nil)
	_ Releaser = (*fakeMounter)(nil)
)

func newFakeMounter() *fakeMounter {
	return &fakeMounter{mounted: map[string]map[string]string{}, dead: map[string]bool{}}
}

func (f *fakeMounter) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "mount "+mountpoint)
	if mountctx.LocalOnly(ctx) {
		f.localCalls = append(f.localCalls, "mount "+mountpoint)
	}
	var injected error
	if f.mountErr != nil {
		injected = f.mountErr(mountpoint, labels)
	}
	if injected != nil && !f.halfMount {
		return injected
	}
	// Like a real filesystem, take over a stale mount left behind.
	if mounted, _ := isMountPoint(mountpoint); mounted {
		if err := syscall.Unmount(mountpoint, syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("fake: detach stale mount: %w", err)
		}
	}
	if err := syscall.Mount("tmpfs", mountpoint, "tmpfs", 0, "size=1m"); err != nil {
		return fmt.Errorf("fake: mount tmpfs: %w", err)
	}
	content := labels[TargetRefLabel]
	if err := os.WriteFile(filepath.Join(mountpoint, "layer"), []byte(content), 0o644); err != nil {
		return fmt.Errorf("fake: write layer file: %w", err)
	}
	if injected != nil {
		return injected
	}
	f.mounted[mountpoint] = labels
	delete(f.dead, mountpoint)
	return nil
}

func (f *fakeMounter) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "check "+mountpoint)
	if mountctx.LocalOnly(ctx) {
		f.localCalls = append(f.localCalls, "check "+mountpoint)
	}
	mounted, err := isMountPoint(mountpoint)
	if err != nil || !mounted {
		return fmt.Errorf("fake: %s not mounted (%v)", mountpoint, err)
	}
	if _, ok := f.mounted[mountpoint]; !ok && !f.adopt {
		return fmt.Errorf("fake: %s not served by this process", mountpoint)
	}
	if f.dead[mountpoint] {
		return fmt.Errorf("fake: %s: %w", mountpoint, syscall.ENOTCONN)
	}
	return nil
}

func (f *fakeMounter) Unmount(ctx context.Context, mountpoint string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "unmount "+mountpoint)
	delete(f.mounted, mountpoint)
	if err := syscall.Unmount(mountpoint, 0); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("fake: unmount: %w", err)
	}
	return nil
}

// Release records the call, and whether the snapshot directory was still
// there: it must be deleted first.
func (f *fakeMounter) Release(ctx context.Context, mountpoint string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "release "+mountpoint)
	if _, err := os.Lstat(filepath.Dir(mountpoint)); !errors.Is(err, os.ErrNotExist) {
		f.releasedEarly = append(f.releasedEarly, mountpoint)
	}
	return nil
}

// mounterOnly hides the Releaser of a Mounter.
type mounterOnly struct{ Mounter }

// kill makes the layer at mountpoint fail its checks, as a dead FUSE server
// would.
func (f *fakeMounter) kill(mountpoint string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dead[mountpoint] = true
}

// count returns how many calls of kind ("mount", "check", "unmount",
// "release") were
// made for mountpoint.
func (f *fakeMounter) count(kind, mountpoint string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == kind+" "+mountpoint {
			n++
		}
	}
	return n
}

// testContext returns a context logging to t.
func testContext(t *testing.T) context.Context {
	return logtest.WithT(context.Background(), t)
}

// requireRoot stops a test that needs mounts when not run as root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: the snapshotter mounts overlayfs and tmpfs")
	}
}

// tempRoot returns a fresh directory and, when the test ends, detaches
// anything still mounted below it so that it can be removed.
func tempRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	t.Cleanup(func() { detachBelow(t, root) })
	return root
}

// detachBelow lazily unmounts every mount under dir, deepest first.
func detachBelow(t *testing.T, dir string) {
	t.Helper()
	for _, mp := range mountsBelow(t, dir) {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
			t.Errorf("detach %s: %v", mp, err)
		}
	}
}

// mountsBelow lists the mountpoints under dir, deepest first.
func mountsBelow(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("read mount table: %v", err)
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			mps = append(mps, fields[4])
		}
	}
	for i, j := 0, len(mps)-1; i < j; i, j = i+1, j-1 {
		mps[i], mps[j] = mps[j], mps[i]
	}
	return mps
}
