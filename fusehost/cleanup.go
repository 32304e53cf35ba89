package fusehost

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// How long Cleanup waits for a host to exit after /shutdown, and after
// SIGKILL.
const (
	shutdownTimeout = 60 * time.Second
	exitWait        = 10 * time.Second
)

// Cleanup ends every FUSE host of root and removes what they leave: each
// host that answers is shut down (it unmounts its layers), one that does not
// is killed (its pid read from its lock file, checked against its command
// line), any FUSE mount left under root is detached, and the hosts' sockets
// and lock files are removed. The caller holds the root lock (no daemon
// runs). Running it again does nothing more.
func Cleanup(ctx context.Context, root string) error {
	ids := map[string]bool{}
	sockIDs, err := listSockets(root)
	if err != nil {
		return err
	}
	for _, id := range sockIDs {
		ids[id] = true
	}
	locks, _ := filepath.Glob(filepath.Join(Dir(root), "*.lock"))
	for _, l := range locks {
		ids[strings.TrimSuffix(filepath.Base(l), ".lock")] = true
	}
	var errs []error
	for id := range ids {
		errs = append(errs, endHost(ctx, root, id))
	}
	errs = append(errs, detachFUSE(root))
	for id := range ids {
		for _, p := range []string{SocketPath(root, id), LockPath(root, id)} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if d := SocketDir(root); d != Dir(root) {
		_ = os.Remove(d)
	}
	_ = os.Remove(Dir(root))
	return errors.Join(errs...)
}

// endHost shuts the host id down, or kills it.
func endHost(ctx context.Context, root, id string) error {
	l := log.G(ctx).WithField("host_id", id)
	c := newConn(id, SocketPath(root, id))
	if _, err := c.health(ctx, 5*time.Second); err == nil {
		if err := c.call(ctx, http.MethodPost, pathShutdown, shutdownTimeout, nil, nil); err != nil {
			l.WithError(err).Warn("FUSE host shutdown reported an error")
		}
		if waitUnlocked(ctx, LockPath(root, id), exitWait) {
			l.Info("FUSE host shut down")
			return nil
		}
	}
	if waitUnlocked(ctx, LockPath(root, id), 0) {
		return nil // not running
	}
	pid, err := hostPID(root, id)
	if err != nil {
		return fmt.Errorf("FUSE host %s holds its lock but does not answer: %w", id, err)
	}
	l.WithField("host_pid", pid).Warn("FUSE host does not answer; killing it")
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill FUSE host %s (pid %d): %w", id, pid, err)
	}
	if !waitUnlocked(ctx, LockPath(root, id), exitWait) {
		return fmt.Errorf("FUSE host %s (pid %d) still holds its lock after SIGKILL", id, pid)
	}
	return nil
}

// hostPID reads the pid a host wrote into its lock file and checks that
// this process is that host.
func hostPID(root, id string) (int, error) {
	data, err := os.ReadFile(LockPath(root, id))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("lock file holds no pid: %q", data)
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	if s := string(cmdline); !strings.Contains(s, "fuse-host") || !strings.Contains(s, id) {
		return 0, fmt.Errorf("pid %d is not FUSE host %s", pid, id)
	}
	return pid, nil
}

// waitUnlocked waits up to d for no process to hold the lock at path (a
// missing file is unlocked).
func waitUnlocked(ctx context.Context, path string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if !locked(path) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// locked reports whether a process holds an flock on path.
func locked(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	return false
}

// detachFUSE lazily unmounts every FUSE mount under root, deepest first.
func detachFUSE(root string) error {
	abs, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(abs))
	if err != nil {
		return fmt.Errorf("read mount table: %w", err)
	}
	var points []string
	for _, m := range infos {
		if m.FSType == "fuse" || strings.HasPrefix(m.FSType, "fuse.") {
			points = append(points, m.Mountpoint)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("detach %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}
