package service

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
)

func TestListenCreatesPrivateDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "soci", "s.sock")
	l, err := Listen(context.Background(), "unix://"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("socket directory mode %o, want 700", perm)
	}
	si, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := si.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket mode %o, want 600", perm)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	// Leave the file behind as a crashed daemon would.
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket file should exist: %v", err)
	}
	l, err := Listen(context.Background(), path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("new socket does not accept: %v", err)
	}
	c.Close()
}

func TestListenRefusesLiveSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	live, err := Listen(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if l, err := Listen(context.Background(), path); err == nil {
		l.Close()
		t.Fatal("second listener took a live socket")
	} else if !strings.Contains(err.Error(), "in use") {
		t.Errorf("error %q does not say the socket is in use", err)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "not-a-socket")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := Listen(context.Background(), path); err == nil {
		l.Close()
		t.Fatal("listened over a regular file")
	}
	if data, _ := os.ReadFile(path); string(data) != "precious" {
		t.Error("regular file at the socket path was changed")
	}
}

// fd:// with nothing passed serves on the fallback (the default socket in
// the daemon), as upstream does, and says so at Info.
func TestListenSystemdWithoutSocketsFallsBack(t *testing.T) {
	t.Setenv("LISTEN_FDS", "")
	t.Setenv("LISTEN_PID", "")
	var buf bytes.Buffer
	logger := logrus.New()
	logger.SetOutput(&buf)
	logger.SetLevel(logrus.InfoLevel)
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(logger))

	path := filepath.Join(t.TempDir(), "run", "default.sock")
	l, err := systemdListener(ctx, path)
	if err != nil {
		t.Fatalf("fd:// without systemd sockets: %v", err)
	}
	defer l.Close()
	if got := l.Addr().String(); got != path {
		t.Errorf("listening on %q, want the fallback %q", got, path)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("fallback socket does not accept: %v", err)
	}
	c.Close()
	out := buf.String()
	if !strings.Contains(out, "level=info") || !strings.Contains(out, "no socket was passed") || !strings.Contains(out, path) {
		t.Errorf("want an Info line naming the fallback address, got %q", out)
	}
}

// The fallback keeps the unix listener's safety: a live daemon on the
// default socket is not displaced.
func TestListenSystemdFallbackRefusesLiveSocket(t *testing.T) {
	t.Setenv("LISTEN_FDS", "")
	t.Setenv("LISTEN_PID", "")
	path := filepath.Join(t.TempDir(), "default.sock")
	live, err := Listen(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if l, err := systemdListener(context.Background(), path); err == nil {
		l.Close()
		t.Fatal("fd:// fallback took a live socket")
	} else if !strings.Contains(err.Error(), "in use") {
		t.Errorf("error %q does not say the socket is in use", err)
	}
}

func TestLockRootExclusive(t *testing.T) {
	root := t.TempDir()
	first, err := lockRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockRoot(root); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second lock of %s: got %v, want an in-use error", root, err)
	}
	if err := first.release(); err != nil {
		t.Fatal(err)
	}
	again, err := lockRoot(root)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	again.release()
}
