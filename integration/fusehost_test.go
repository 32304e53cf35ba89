package integration

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// fuseMountIDs maps each lazily loaded layer's mountpoint under the
// daemon's root to its mount ID: a layer mounted again gets a new ID.
func fuseMountIDs(t *testing.T, e *harness.Env) map[string]int {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(e.Daemon.Root))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, m := range infos {
		if m.FSType == "fuse.rawBridge" {
			out[m.Mountpoint] = m.ID
		}
	}
	return out
}

// slowReader is a container reading a 16 MiB lazily loaded file 256 KiB at
// a time, 100 ms apart (about 6 s; 65 reads with the one at EOF), started
// in the background.
type slowReader struct {
	name string
	want string // the probe's line for a whole, correct read
	done chan error
	out  string
}

func startSlowReader(t *testing.T, ctx context.Context, e *harness.Env, name string) *slowReader {
	t.Helper()
	big := randomBytes(42, 16<<20)
	spec := image.Spec{
		Layers: []image.Layer{{Entries: []image.Entry{
			dir("bin"), {Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary},
			dir("data"), file("data/big.bin", big),
		}}},
		Entrypoint: []string{"/bin/probe"},
	}
	ref := pushV2(t, e, "survive/"+name+":latest", buildImage(t, spec), sociimage.Options{SpanSize: 1 << 20})
	if _, err := e.Nerdctl(ctx, "--snapshotter", "soci", "pull", ref); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(big)
	r := &slowReader{name: name, want: "/data/big.bin " + hex.EncodeToString(sum[:]) + " reads=65", done: make(chan error, 1)}
	go func() {
		var err error
		r.out, err = e.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", "--name", name, ref,
			"slow-read", "/data/big.bin", "262144", "100")
		r.done <- err
	}()
	// Running: nerdctl lists it as up (the reader starts at once).
	deadline := time.Now().Add(time.Minute)
	for {
		out, _ := e.Nerdctl(ctx, "ps")
		if strings.Contains(out, name) && strings.Contains(out, "Up") {
			return r
		}
		select {
		case err := <-r.done:
			t.Fatalf("reader ended before it ran: %v\n%s", err, r.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("reader container not running after a minute:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// check waits for the reader and checks it read the whole file right,
// without a single failed read.
func (r *slowReader) check(t *testing.T) {
	t.Helper()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("reader failed: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("reader still running after 2 minutes")
	}
	if !strings.Contains(r.out, r.want) {
		t.Errorf("reader output %q, want a line %q", r.out, r.want)
	}
}

// TestContainerSurvivesDaemonKill: a container reading a lazily loaded file
// goes on reading, without one error, while the daemon is killed with
// SIGKILL and started again; the new daemon adopts the FUSE host, and the
// layer is not mounted again (same mount).
func TestContainerSurvivesDaemonKill(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
	ctx := testContext(t, 5*time.Minute)
	r := startSlowReader(t, ctx, e, "killed")
	before := fuseMountIDs(t, e)
	hosts := e.Daemon.HostPids()
	if len(before) == 0 || len(hosts) != 1 {
		t.Fatalf("before the kill: %d FUSE layers, FUSE hosts %v", len(before), hosts)
	}
	if err := e.Daemon.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := e.Daemon.Start(ctx); err != nil {
		t.Fatal(err)
	}
	r.check(t)
	if after := fuseMountIDs(t, e); !maps.Equal(before, after) {
		t.Errorf("FUSE mounts changed across the daemon's kill: before %v, after %v", before, after)
	}
	if after := e.Daemon.HostPids(); !slices.Equal(hosts, after) {
		t.Errorf("FUSE hosts changed across the daemon's kill: before %v, after %v", hosts, after)
	}
	data, _ := os.ReadFile(e.Daemon.Log())
	if !strings.Contains(string(data), "adopted running FUSE host") {
		t.Errorf("the restarted daemon did not say it adopted the FUSE host:\n%s", e.Daemon.LogTail(30))
	}
	// A new container of the same image after the restart runs too.
	if out, err := e.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none",
		e.Registry.Host+"/survive/killed:latest", "sha256", "/data/big.bin"); err != nil || !strings.Contains(out, strings.Fields(r.want)[1]) {
		t.Errorf("new container after the restart: %v\n%s", err, out)
	}
}

// TestDaemonStopsFastWithContainerRunning: SIGTERM ends the daemon within
// 5 s while a container reads a lazily loaded layer, and the container's
// reads go on (its layer stays mounted, served by the FUSE host).
func TestDaemonStopsFastWithContainerRunning(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
	ctx := testContext(t, 5*time.Minute)
	r := startSlowReader(t, ctx, e, "stopped")
	before := fuseMountIDs(t, e)
	start := time.Now()
	if err := e.Daemon.Stop(); err != nil {
		t.Fatalf("daemon did not stop cleanly: %v\n%s", err, e.Daemon.LogTail(20))
	}
	took := time.Since(start)
	t.Logf("daemon stopped %s after SIGTERM", took)
	if took > 5*time.Second {
		t.Errorf("daemon took %s to stop, want < 5s", took)
	}
	if after := fuseMountIDs(t, e); !maps.Equal(before, after) {
		t.Errorf("FUSE mounts changed when the daemon stopped: before %v, after %v", before, after)
	}
	if err := e.Daemon.Start(ctx); err != nil {
		t.Fatal(err)
	}
	r.check(t)
	if n := len(e.Daemon.HostPids()); n != 1 {
		t.Errorf("%d FUSE hosts, want 1", n)
	}
}
