package fusehost

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// staleSocket leaves a socket file at path that nobody listens on.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
}

func TestConnectReplacesStaleSocketAndLaunches(t *testing.T) {
	root := shortRoot(t)
	if err := os.MkdirAll(SocketDir(root), 0o700); err != nil {
		t.Fatal(err)
	}
	staleSocket(t, SocketPath(root, "own"))
	staleSocket(t, SocketPath(root, "gone")) // an older host that died
	var launched []*testHost
	launch := func(context.Context) (<-chan error, error) {
		launched = append(launched, startTestHost(t, root, "own", newFakeFS()))
		return make(chan error), nil
	}
	c := connect(t, root, "own", func(o *ClientOptions) { o.Launch = launch })
	if len(launched) != 1 || !c.Launched() {
		t.Fatalf("launched %d hosts (Launched %v), want 1", len(launched), c.Launched())
	}
	if _, err := os.Lstat(SocketPath(root, "gone")); !os.IsNotExist(err) {
		t.Errorf("stale socket of a dead older host left: %v", err)
	}
	// The own host dies: the next call starts it again and goes through.
	launched[0].stop()
	if err := c.Mount(context.Background(), "/m/a", nil); err != nil {
		t.Fatalf("mount after the host died: %v", err)
	}
	if len(launched) != 2 {
		t.Fatalf("launched %d hosts, want 2", len(launched))
	}
	if calls := launched[1].fs.Calls(); len(calls) != 1 || calls[0] != "mount /m/a" {
		t.Errorf("relaunched host got %v", calls)
	}
	// A second Connect adopts the running host.
	c2 := connect(t, root, "own", func(o *ClientOptions) { o.Launch = launch })
	if c2.Launched() || len(launched) != 2 {
		t.Errorf("second Connect launched a host (Launched %v, %d)", c2.Launched(), len(launched))
	}
}

func TestConnectRefusesHostOfOtherID(t *testing.T) {
	root := shortRoot(t)
	h := startTestHost(t, root, "other", newFakeFS())
	// The socket of "own" answers as "other".
	if err := os.Symlink(SocketPath(root, "other"), SocketPath(root, "own")); err != nil {
		t.Fatal(err)
	}
	if _, err := Connect(context.Background(), ClientOptions{Root: root, ID: "own"}); err == nil {
		t.Error("adopted a host answering with another id")
	}
	_ = h
}

func TestSocketDirFitsSunPath(t *testing.T) {
	short := "/var/lib/soci-snapshotter-grpc"
	if got := SocketDir(short); got != Dir(short) {
		t.Errorf("short root: socket dir %s, want %s", got, Dir(short))
	}
	long := "/tmp/" + strings.Repeat("d", 100)
	got := SocketDir(long)
	if got == Dir(long) || len(SocketPath(long, "0123456789abcdef")) > sunPathMax {
		t.Errorf("long root: socket dir %s", got)
	}
	if SocketDir(long) != got {
		t.Error("SocketDir is not deterministic")
	}
}

// TestBuildIDDiffersByVersion: two links of the daemon that differ only in
// a -X version string get different build IDs, so an upgrade built that
// way gets a host of its own.
func TestBuildIDDiffersByVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the daemon twice")
	}
	dir := t.TempDir()
	ids := map[string]string{}
	for _, v := range []string{"v1", "v2"} {
		bin := filepath.Join(dir, v)
		cmd := exec.Command("go", "build", "-o", bin, "-ldflags", "-X github.com/fastsoci/soci-snapshotter/internal/version.Version="+v, "../cmd/soci-snapshotter-grpc")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", v, err, out)
		}
		id, err := goBuildID(bin)
		if err != nil {
			t.Fatal(err)
		}
		if len(id) < 20 {
			t.Fatalf("build ID %q too short", id)
		}
		ids[v] = string(id)
	}
	if ids["v1"] == ids["v2"] {
		t.Fatalf("both builds have build ID %q", ids["v1"])
	}
}

func BenchmarkExecutableID(b *testing.B) {
	for b.Loop() {
		if _, err := ExecutableID([]byte("settings")); err != nil {
			b.Fatal(err)
		}
	}
}
