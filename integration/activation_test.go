package integration

import (
	"context"
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
// serves on that socket, and containerd runs an image lazily through it.
func TestSystemdSocketActivation(t *testing.T) {
	activator, err := harness.SocketActivator()
	if err != nil {
		t.Fatal(err)
	}
	e := startEnvWith(t, defaultDaemonConfig, func(ctx context.Context, d *harness.Daemon) error {
		return d.StartSocketActivated(ctx, activator)
	})
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	ref := pushV2(t, e, "activation/passed:latest", buildImage(t, img.spec), sociimage.Options{SpanSize: 1 << 20})
	checkLazyRun(t, ctx, e, ref, img, 3)

	log := readLog(t, e.Daemon.Log())
	if strings.Contains(log, "no socket was passed") {
		t.Errorf("daemon fell back to the default socket although one was passed:\n%s", tail(log, 20))
	}
	if !strings.Contains(log, "serving snapshots API") {
		t.Errorf("daemon log has no serving line:\n%s", tail(log, 20))
	}
}

// TestFDWithoutPassedSocket: `--address fd://` with nothing passed (the
// unit's ExecStart run without its .socket) serves on the default socket
// with an Info line saying so, as upstream does, and containerd runs an
// image lazily through it.
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
