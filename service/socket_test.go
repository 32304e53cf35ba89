package service

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

// wideUmask sets the process umask to 0 for the test, the worst case: a
// socket bound in place would get mode 0777. The service's tests don't run
// in parallel, so nothing else creates files meanwhile.
func wideUmask(t *testing.T) {
	t.Helper()
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
}

// dirWatch records what happens to the names in one directory (inotify).
type dirWatch struct {
	fd int
}

func watchDir(t *testing.T, dir string) *dirWatch {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Skipf("inotify: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	mask := uint32(unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_ATTRIB | unix.IN_DELETE | unix.IN_MOVED_FROM)
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		t.Fatalf("watch %s: %v", dir, err)
	}
	return &dirWatch{fd: fd}
}

// events returns the masks of the events queued so far for name. The kernel
// queues an event before the system call that caused it returns, so reading
// after the code under test returned sees all of them.
func (w *dirWatch) events(t *testing.T, name string) []uint32 {
	t.Helper()
	var got []uint32
	buf := make([]byte, 64*1024)
	for {
		n, err := unix.Read(w.fd, buf)
		if errors.Is(err, unix.EAGAIN) {
			return got
		}
		if err != nil {
			t.Fatalf("read inotify events: %v", err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			if string(bytes.TrimRight(nameBytes, "\x00")) == name {
				got = append(got, ev.Mask)
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

// checkAppearedByRename asserts that name in w's directory came into being
// only by a rename and that nothing changed its mode under that name: with
// the final mode checked separately, the path never existed with another mode.
func checkAppearedByRename(t *testing.T, w *dirWatch, name string) {
	t.Helper()
	evs := w.events(t, name)
	moved := false
	for _, m := range evs {
		switch {
		case m&unix.IN_CREATE != 0:
			t.Errorf("%s was created in place (bound there), not renamed into place", name)
		case m&unix.IN_ATTRIB != 0:
			t.Errorf("%s had its attributes changed after it appeared", name)
		case m&unix.IN_MOVED_TO != 0:
			moved = true
		}
	}
	if !moved {
		t.Errorf("%s never appeared by rename (events %x)", name, evs)
	}
}

// checkSocket asserts path is a socket with mode 0600, alone in its
// directory (no private bind directory left behind).
func checkSocket(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("%s is not a socket: %v", path, fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket %s mode %o, want 600", path, perm)
	}
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != filepath.Base(path) {
			t.Errorf("left behind in the socket directory: %s", e.Name())
		}
	}
}

func TestListenSocketNeverHasWiderMode(t *testing.T) {
	wideUmask(t)
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	w := watchDir(t, dir)
	path := filepath.Join(dir, "s.sock")
	l, err := Listen(context.Background(), "unix://"+path)
	if err != nil {
		t.Fatal(err)
	}
	checkAppearedByRename(t, w, "s.sock")
	checkSocket(t, path)
	if got := l.Addr().String(); got != path {
		t.Errorf("Addr() = %q, want the final path %q", got, path)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("socket does not accept: %v", err)
	}
	c.Close()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file still there after Close: %v", err)
	}
}

func TestListenPrivateDirectoryWithWideUmask(t *testing.T) {
	wideUmask(t)
	path := filepath.Join(t.TempDir(), "run", "soci", "s.sock")
	l, err := Listen(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, d := range []string{filepath.Dir(path), filepath.Dir(filepath.Dir(path))} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o700 {
			t.Errorf("directory %s mode %o, want 700", d, perm)
		}
	}
	checkSocket(t, path)
}

func TestListenCloseKeepsAReplacedPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	// Someone (an operator, a newer daemon) put another file at the path.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("other"), 0o600); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if data, err := os.ReadFile(path); err != nil || string(data) != "other" {
		t.Errorf("Close removed or changed a file it did not create: %q, %v", data, err)
	}
}

func TestListenRefusesTooLongPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), strings.Repeat("d", 100), "s.sock")
	if l, err := Listen(context.Background(), path); err == nil {
		l.Close()
		t.Fatal("listened on a path longer than sun_path")
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 0 {
		t.Errorf("left behind after a failed listen: %v", ents)
	}
}

func TestServeMetricsUnixSocketNeverHasWiderMode(t *testing.T) {
	wideUmask(t)
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	w := watchDir(t, dir)
	cfg := config.Default()
	cfg.MetricsNetwork = config.NetworkUnix
	cfg.MetricsAddress = filepath.Join(dir, "metrics.sock")
	s, err := serveMetrics(context.Background(), cfg, metrics.New().Handler())
	if err != nil {
		t.Fatal(err)
	}
	checkAppearedByRename(t, w, "metrics.sock")
	checkSocket(t, cfg.MetricsAddress)
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(cfg.MetricsAddress); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("metrics socket still there after close: %v", err)
	}
}

func TestDebugUnixSocketNeverHasWiderMode(t *testing.T) {
	wideUmask(t)
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	w := watchDir(t, dir)
	path := filepath.Join(dir, "debug.sock")
	d, err := startDebug(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	checkAppearedByRename(t, w, "debug.sock")
	checkSocket(t, path)
	if err := d.close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("debug socket still there after close: %v", err)
	}
}

func TestDebugUnixSocketReplacesStaleAndRefusesLive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "debug.sock")
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	d, err := startDebug(context.Background(), path)
	if err != nil {
		t.Fatalf("stale debug socket not replaced: %v", err)
	}
	defer d.close()
	if d2, err := startDebug(context.Background(), path); err == nil {
		d2.close()
		t.Fatal("second debug server took a live socket")
	} else if !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), "debug_address") {
		t.Errorf("error %q does not name debug_address and say the socket is in use", err)
	}
}

func TestDebugTCPLoopbackOnly(t *testing.T) {
	// Well-formed but not loopback: the daemon starts, pprof is not served.
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0", "example.com:0"} {
		d, err := startDebug(context.Background(), addr)
		if err != nil || d != nil {
			if d != nil {
				d.close()
			}
			t.Errorf("%q: got server %v, error %v; want neither", addr, d != nil, err)
		}
	}
	if d, err := startDebug(context.Background(), "127.0.0.1"); err == nil {
		if d != nil {
			d.close()
		}
		t.Error("debug server started on an address without a port")
	} else if !strings.Contains(err.Error(), "debug_address") {
		t.Errorf("error %q does not name debug_address", err)
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:0", "[::1]:0"} {
		d, err := startDebug(context.Background(), addr)
		if err != nil {
			if addr == "[::1]:0" && strings.Contains(err.Error(), "assign requested address") {
				continue // no IPv6 loopback here
			}
			t.Errorf("debug server on %q: %v", addr, err)
			continue
		}
		if err := d.close(); err != nil {
			t.Error(err)
		}
	}
}
