package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
)

// TestRunThroughDaemon runs a three-layer image through containerd and our
// daemon with nerdctl and with ctr, checks isolation of container writes and
// that removing the image frees our snapshots.
func TestRunThroughDaemon(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
	img := newLayeredImage()
	ref := pushImage(t, e.Registry.Host, "foundation/app:v1", img.spec)
	ctx := testContext(t, 5*time.Minute)

	t.Run("nerdctl", func(t *testing.T) {
		args := append([]string{"--snapshotter", "soci", "run", "--rm", "--net", "none", ref, "sha256"}, img.paths...)
		out, err := e.Nerdctl(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		checkSums(t, out, img.want)
	})

	t.Run("ctr", func(t *testing.T) {
		if _, err := e.Ctr(ctx, "images", "pull", "--plain-http", "--snapshotter", "soci", ref); err != nil {
			t.Fatal(err)
		}
		args := append([]string{"run", "--rm", "--snapshotter", "soci", ref, "ctr-probe", "/bin/probe", "sha256"}, img.paths...)
		out, err := e.Ctr(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		checkSums(t, out, img.want)
	})

	t.Run("writes stay in the container", func(t *testing.T) {
		_, err := e.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", ref,
			"write", "/data/a.txt", "changed", "--", "write", "/data/new.txt", "new", "--", "sha256", "/data/a.txt")
		if err != nil {
			t.Fatal(err)
		}
		out, err := e.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", ref,
			"sha256", "/data/a.txt", "/data/new.txt")
		if err != nil {
			t.Fatal(err)
		}
		checkSums(t, out, map[string]string{"/data/a.txt": img.want["/data/a.txt"], "/data/new.txt": "/data/new.txt MISSING"})
		committed, err := e.Ctr(ctx, "snapshots", "--snapshotter", "soci", "ls")
		if err != nil {
			t.Fatal(err)
		}
		if n := len(snapshotRows(committed)); n != 3 || strings.Count(committed, "Committed") != 3 {
			t.Errorf("want the image's 3 committed layers left after the containers are gone, got %d:\n%s", n, committed)
		}
	})

	t.Run("removing the image frees our snapshots", func(t *testing.T) {
		snapshotsDir := filepath.Join(e.Daemon.Root, "snapshotter", "snapshots")
		if before, err := os.ReadDir(snapshotsDir); err != nil || len(before) < 3 {
			t.Fatalf("want the image's layer dirs in %s before removal, got %d (%v)", snapshotsDir, len(before), err)
		}
		if _, err := e.Nerdctl(ctx, "rmi", "-f", ref); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Ctr(ctx, "images", "rm", "--sync", ref); err != nil && !strings.Contains(err.Error(), "not found") {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			left, _ := os.ReadDir(snapshotsDir)
			listed, err := e.Ctr(ctx, "snapshots", "--snapshotter", "soci", "ls")
			if err != nil {
				t.Fatal(err)
			}
			if len(left) == 0 && len(snapshotRows(listed)) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after removing the image: %d snapshot dirs left in %s, ctr lists:\n%s", len(left), snapshotsDir, listed)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

// TestDaemonRestart stops the daemon with SIGTERM after a pull and starts it
// again: the socket is removed on stop, and the committed snapshots still
// run a container afterwards.
func TestDaemonRestart(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
	img := newLayeredImage()
	ref := pushImage(t, e.Registry.Host, "restart/app:v1", img.spec)
	ctx := testContext(t, 5*time.Minute)
	if _, err := e.Nerdctl(ctx, "--snapshotter", "soci", "pull", ref); err != nil {
		t.Fatal(err)
	}
	if err := e.Daemon.Stop(); err != nil {
		t.Fatalf("daemon did not exit cleanly on SIGTERM: %v\n%s", err, e.Daemon.LogTail(20))
	}
	if _, err := os.Lstat(e.Daemon.Address); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind after stop (err=%v)", e.Daemon.Address, err)
	}
	if err := e.Daemon.Start(ctx); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--snapshotter", "soci", "run", "--rm", "--net", "none", ref, "sha256"}, img.paths...)
	out, err := e.Nerdctl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, out, img.want)
}

// TestSecondDaemonRefused: a daemon whose socket is held by a live daemon
// exits with an error instead of stealing the socket.
func TestSecondDaemonRefused(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
	ctx := testContext(t, time.Minute)
	out, err := harness.Run(ctx, nil, filepath.Join(e.Tools.Ours, "soci-snapshotter-grpc"),
		"--address", e.Daemon.Address, "--root", filepath.Join(t.TempDir(), "root2"), "--config", e.Daemon.Config)
	if err == nil {
		t.Fatalf("second daemon started on a live socket:\n%s", out)
	}
	if !strings.Contains(out, "in use") {
		t.Errorf("error does not say the socket is in use:\n%s", out)
	}
	if _, err := e.Ctr(ctx, "snapshots", "--snapshotter", "soci", "ls"); err != nil {
		t.Errorf("first daemon no longer answers: %v", err)
	}
}

// snapshotRows returns the rows of `ctr snapshots ls` output, without the
// header and containerd's log lines (warnings go to the same output).
func snapshotRows(out string) []string {
	var rows []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "KEY" || strings.HasPrefix(f[0], "time=") {
			continue
		}
		rows = append(rows, line)
	}
	return rows
}
