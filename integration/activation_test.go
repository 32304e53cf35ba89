package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// startEnvWith is startEnv with the daemon started by start.
func startEnvWith(t *testing.T, daemonConfig string, start harness.DaemonStarter) *harness.Env {
	t.Helper()
	return startEnvIn(t, t.TempDir(), daemonConfig, start)
}

// startEnvIn is startEnvWith under dir, for a daemon config that names
// paths of the environment (containerd's socket is dir/containerd/containerd.sock).
func startEnvIn(t *testing.T, dir, daemonConfig string, start harness.DaemonStarter) *harness.Env {
	t.Helper()
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, err := harness.StartWith(ctx, tools, dir, daemonConfig, start)
	if err != nil {
		t.Fatalf("start environment: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, e)
		}
		if err := e.Close(); err != nil {
			t.Errorf("stop environment: %v", err)
		}
	})
	return e
}

// TestSystemdSocketActivation: upstream's documented unit line
// (`--address fd://`) with the socket passed the way systemd passes it
// (LISTEN_FDS/LISTEN_PID, fd 3, by systemd-socket-activate): the daemon
// holds and serves on that socket (containerd runs an image lazily through
// it) and does not create the default socket.
func TestSystemdSocketActivation(t *testing.T) {
	activator, err := harness.SocketActivator()
	if err != nil {
		t.Fatal(err)
	}
	_, defaultErr := os.Lstat(config.DefaultAddress)
	e := startEnvWith(t, defaultDaemonConfig, func(ctx context.Context, d *harness.Daemon) error {
		return d.StartSocketActivated(ctx, activator)
	})
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	ref := pushV2(t, e, "activation/passed:latest", buildImage(t, img.spec), sociimage.Options{SpanSize: 1 << 20})
	checkLazyRun(t, ctx, e, ref, img, 3)

	if !holdsListener(t, e.Daemon.Pid(), e.Daemon.Address) {
		t.Errorf("daemon (pid %d) does not hold the listening socket passed at %s", e.Daemon.Pid(), e.Daemon.Address)
	}
	if _, err := os.Lstat(config.DefaultAddress); os.IsNotExist(defaultErr) && err == nil {
		t.Errorf("daemon created the default socket %s although one was passed", config.DefaultAddress)
	}
}

// TestFDWithoutPassedSocket: `--address fd://` with nothing passed (the
// unit's ExecStart run without its .socket) serves on the default socket
// (a 0600 socket there, containerd runs an image lazily through it) with an
// Info line saying so, as upstream does.
func TestFDWithoutPassedSocket(t *testing.T) {
	fallback := config.DefaultAddress
	if c, err := net.DialTimeout("unix", fallback, time.Second); err == nil {
		c.Close()
		t.Fatalf("a daemon already serves on the default socket %s; this test needs it free", fallback)
	}
	_, dirErr := os.Stat(filepath.Dir(fallback))
	e := startEnvWith(t, defaultDaemonConfig, func(ctx context.Context, d *harness.Daemon) error {
		return d.StartFDWithoutSocket(ctx, fallback)
	})
	if os.IsNotExist(dirErr) {
		t.Cleanup(func() { os.Remove(filepath.Dir(fallback)) })
	}
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	ref := pushV2(t, e, "activation/fallback:latest", buildImage(t, img.spec), sociimage.Options{SpanSize: 1 << 20})
	checkLazyRun(t, ctx, e, ref, img, 3)

	if st, err := os.Lstat(fallback); err != nil {
		t.Errorf("default socket: %v", err)
	} else if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
		t.Errorf("default socket %s has mode %v, want a socket of mode 0600", fallback, st.Mode())
	}
	// The log line is the contract here: upstream tells an operator at Info
	// level that no socket was passed and names the socket it serves on
	// instead (docs/migration.md, "The systemd unit").
	log := readLog(t, e.Daemon.Log())
	var info string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "no socket was passed") {
			info = line
		}
	}
	if !strings.Contains(info, "level=info") || !strings.Contains(info, fallback) {
		t.Errorf("want an Info line naming %s, got %q in:\n%s", fallback, info, tail(log, 20))
	}
}

func readLog(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// holdsListener reports whether process pid has a file descriptor on a
// listening unix socket bound at path (as /proc/net/unix names it: the path
// given to bind, which for a socket passed by an activator is its address).
func holdsListener(t *testing.T, pid int, path string) bool {
	t.Helper()
	table, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	// Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 is
	// __SO_ACCEPTCON, a listening socket.
	inodes := map[string]bool{}
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) == 8 && f[7] == path && f[3] == "00010000" {
			inodes["socket:["+f[6]+"]"] = true
		}
	}
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatalf("list the daemon's file descriptors: %v", err)
	}
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && inodes[target] {
			return true
		}
	}
	return false
}
