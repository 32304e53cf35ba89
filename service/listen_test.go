package service

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListenCreatesPrivateDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "soci", "s.sock")
	l, err := Listen("unix://" + path)
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
	l, err := Listen(path)
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
	live, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if l, err := Listen(path); err == nil {
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
	if l, err := Listen(path); err == nil {
		l.Close()
		t.Fatal("listened over a regular file")
	}
	if data, _ := os.ReadFile(path); string(data) != "precious" {
		t.Error("regular file at the socket path was changed")
	}
}

func TestListenSystemdWithoutSockets(t *testing.T) {
	t.Setenv("LISTEN_FDS", "")
	t.Setenv("LISTEN_PID", "")
	if _, err := Listen("fd://"); err == nil || !strings.Contains(err.Error(), "no listening socket") {
		t.Errorf("fd:// without systemd sockets: got %v", err)
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
