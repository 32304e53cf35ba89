package integration

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
	"github.com/fastsoci/soci-snapshotter/internal/crash"
)

// crashDaemonConfig: no background fetch, so that spans are written (and
// the cache points reached) only by the reads the test makes.
const crashDaemonConfig = defaultDaemonConfig + `
[background_fetch]
  disable = true
`

// crashImage is a two-layer image whose layers are its own (seed): the
// first holds the probe, the second a 2 MiB file (two spans of 1 MiB).
func crashImage(seed int64) layeredImage {
	marker := []byte(fmt.Sprintf("image %d\n", seed))
	big := randomBytes(1000+seed, 2<<20+321)
	probe := image.Entry{Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary}
	img := layeredImage{
		spec: image.Spec{
			Layers: []image.Layer{
				{Entries: []image.Entry{dir("bin"), probe, dir("etc"), file("etc/marker", marker)}},
				{Entries: []image.Entry{dir("data"), file("data/big.bin", big), file("data/small.txt", marker)}},
			},
			Entrypoint: []string{"/bin/probe"},
		},
		want: map[string]string{},
	}
	for path, data := range map[string][]byte{"/etc/marker": marker, "/data/big.bin": big, "/data/small.txt": marker} {
		sum := sha256.Sum256(data)
		img.paths = append(img.paths, path)
		img.want[path] = path + " " + hex.EncodeToString(sum[:])
	}
	return img
}

// crashDriver is how a test reaches a crash point: prepare runs with the
// daemon as usual, drive with the daemon that dies at the point. unpack
// leaves the image's second layer without zTOC, so that containerd unpacks
// it and commits it.
type crashDriver struct {
	prepare func(ctx context.Context, e *harness.Env, ref string) error
	drive   func(ctx context.Context, e *harness.Env, ref string) error
	unpack  bool
	// config, when set, is added to the daemon's configuration for the
	// crash and the start after it.
	config string
}

// crashParallelConfig makes the daemon unpack every layer itself (parallel
// pull), to reach the points on that path.
const crashParallelConfig = `
[pull_modes.parallel_pull_unpack]
  enable = true
  concurrent_download_chunk_size = "1mb"
  discard_unpacked_layers = true
`

func crashPull(ctx context.Context, e *harness.Env, ref string) error {
	out, err := e.Nerdctl(ctx, "--snapshotter", "soci", "pull", "--quiet", ref)
	if err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	return nil
}

func crashRead(ctx context.Context, e *harness.Env, ref string) error {
	_, err := e.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", ref, "sha256", "/data/big.bin")
	return err
}

func crashRemove(ctx context.Context, e *harness.Env, ref string) error {
	if _, err := e.Nerdctl(ctx, "rmi", "-f", ref); err != nil {
		return err
	}
	_, err := e.Ctr(ctx, "images", "rm", "--sync", ref)
	return err
}

// crashDrivers has a driver for every point of crash.Points.
var crashDrivers = map[string]crashDriver{
	crash.RecordBeforeCommit:      {drive: crashPull},
	crash.PrepareAfterRecord:      {drive: crashPull},
	crash.PrepareAfterMount:       {drive: crashPull},
	crash.PrepareAfterCommit:      {drive: crashPull},
	crash.CommitBeforeCommit:      {drive: crashPull, unpack: true},
	crash.CommitAfterCommit:       {drive: crashPull, unpack: true},
	crash.RemoveAfterRecord:       {prepare: crashPull, drive: crashRemove},
	crash.RemoveBeforeRelease:     {prepare: crashPull, drive: crashRemove},
	crash.CachePutBeforeRename:    {prepare: crashPull, drive: crashRead},
	crash.CacheRemoveBeforeDelete: {prepare: crashRead, drive: crashRemove},
	crash.IndexBlobBeforeRename:   {drive: crashPull},
	crash.ZTOCBeforeRename:        {drive: crashPull},
	crash.ChoiceBeforeRename:      {drive: crashPull},
	crash.PullAfterUnpack:         {drive: crashPull, config: crashParallelConfig},
	crash.PullAfterMove:           {drive: crashPull, config: crashParallelConfig},
}

// TestCrashConsistency kills the daemon (SIGKILL, by SOCI_CRASH_POINT) at
// every named crash point in turn, while it serves the operation that
// reaches the point, then starts it again as usual and checks that the
// start finds nothing broken: it starts, no snapshot directory without a
// snapshot, no staging directory of a dead process or temporary file, no
// dead mount, and the image pulls and runs with the right contents. One
// environment serves every point, each with an image of its own.
func TestCrashConsistency(t *testing.T) {
	e := startEnv(t, crashDaemonConfig)
	ctx := testContext(t, 6*time.Minute)
	base := slices.Clone(e.Daemon.Env)
	for i, point := range crash.Points() {
		t.Run(point, func(t *testing.T) {
			d, ok := crashDrivers[point]
			if !ok {
				t.Fatalf("no driver for crash point %s", point)
			}
			img := crashImage(int64(i))
			opts := sociimage.Options{SpanSize: 1 << 20}
			if d.unpack {
				opts.SkipLayers = []int{1}
			}
			ref := pushV2(t, e, fmt.Sprintf("crash/p%d:latest", i), buildImage(t, img.spec), opts)
			if d.prepare != nil {
				if err := d.prepare(ctx, e, ref); err != nil {
					t.Fatal(err)
				}
			}

			if d.config != "" {
				writeDaemonConfig(t, e, crashDaemonConfig+d.config)
				defer writeDaemonConfig(t, e, crashDaemonConfig)
			}
			// The FUSE host the next start launches inherits the
			// point too (the cache and index points fire there): shut
			// down the running one, whose environment has no point.
			restartDaemon(t, ctx, e, append(slices.Clone(base), crash.Env+"="+point))
			from := logSize(t, e)
			err := d.drive(ctx, e, ref)
			waitCrash(t, e, point, from, err)
			killUnder(t, e.Daemon.Root)
			_ = e.Daemon.Kill() // waits until the daemon is gone

			restartDaemon(t, ctx, e, base)
			checkAfterCrash(t, ctx, e)
			if err := afterReconnect(ctx, func() error { return crashPull(ctx, e, ref) }); err != nil {
				t.Fatalf("pull after the crash: %v", err)
			}
			checkSums(t, runSums(t, ctx, e, ref, img.paths), img.want)
		})
		if t.Failed() {
			dumpLogs(t, e)
			return
		}
	}
}

// writeDaemonConfig replaces the daemon's configuration file; the next
// start reads it.
func writeDaemonConfig(t *testing.T, e *harness.Env, cfg string) {
	t.Helper()
	if err := os.WriteFile(e.Daemon.Config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// afterReconnect runs op until it no longer fails for want of a connection
// to the daemon: containerd's client of a proxy snapshotter backs off after
// the daemon died, and may still answer "connection refused" for a moment
// after the new one listens (kubelet retries the same way).
func afterReconnect(ctx context.Context, op func() error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := op()
		if err == nil || !strings.Contains(err.Error(), "connection refused") || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// restartDaemon stops the daemon (if it runs) and its FUSE hosts, and
// starts it with env. After a crash (the daemon is gone) the hosts are
// left as the crash left them, for the start-up to deal with.
func restartDaemon(t *testing.T, ctx context.Context, e *harness.Env, env []string) {
	t.Helper()
	if exited, _ := e.Daemon.Exited(); !exited {
		if err := e.Daemon.Stop(); err != nil {
			t.Fatalf("stop daemon: %v", err)
		}
		if err := e.Daemon.Cleanup(); err != nil {
			t.Fatalf("shut down the FUSE hosts: %v", err)
		}
	}
	e.Daemon.Env = env
	if err := e.Daemon.Start(ctx); err != nil {
		t.Fatalf("start daemon: %v", err)
	}
}

// waitCrash waits for the daemon or its FUSE host (the process that
// reaches point) to die there: the point writes a line into the log they
// share, from offset from on. opErr is what the operation that reached it
// returned.
func waitCrash(t *testing.T, e *harness.Env, point string, from int64, opErr error) {
	t.Helper()
	line := "crash point " + point + ": SIGKILL"
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, err := os.ReadFile(e.Daemon.Log())
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data[from:]), line) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("crash point %s not reached 30s after the operation (%v):\n%s", point, opErr, e.Daemon.LogTail(20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killUnder SIGKILLs every process whose command line names root (the
// daemon and its FUSE hosts) but this one, as a crash of the node's
// snapshotter would, and waits (10 s at most) until they are gone, so that
// the start that follows finds their locks free as after a real crash.
func killUnder(t *testing.T, root string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := 0
		entries, _ := os.ReadDir("/proc")
		for _, ent := range entries {
			pid, err := strconv.Atoi(ent.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			cmdline, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
			if err != nil || !strings.Contains(string(cmdline), root) {
				continue
			}
			if stat, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat")); err == nil && zombie(stat) {
				continue // dead already: its files and locks are released
			}
			left++
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if left == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d processes under %s still alive 10s after SIGKILL", left, root)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// zombie tells whether /proc/<pid>/stat content stat is a zombie's.
func zombie(stat []byte) bool {
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// checkAfterCrash checks what a start after a crash must have cleaned up:
// every snapshot directory belongs to a snapshot, no staging directory of a
// dead process or temporary file is left in the cache or index store, and
// no mount under the test's directory is dead. containerd goes on with its
// own work meanwhile (its garbage collector removes the snapshots of the
// failed operation once the daemon answers again), so a problem fails the
// test only if it is still there after a few seconds.
func checkAfterCrash(t *testing.T, ctx context.Context, e *harness.Env) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		problems := crashLeftovers(t, ctx, e)
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range problems {
				t.Error(p)
			}
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// crashLeftovers returns what checkAfterCrash looks for, as it is now.
func crashLeftovers(t *testing.T, ctx context.Context, e *harness.Env) []string {
	t.Helper()
	var problems []string
	dirs, err := os.ReadDir(filepath.Join(e.Daemon.Root, "snapshotter", "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = daemonSnapshots(t, e).Walk(ctx, func(context.Context, snapshots.Info) error { n++; return nil })
	if err != nil && !errdefs.IsNotFound(err) { // not found: nothing ever stored
		t.Fatalf("list the daemon's snapshots: %v", err)
	}
	var names []string
	for _, d := range dirs {
		names = append(names, d.Name())
		if _, err := strconv.Atoi(d.Name()); err != nil {
			problems = append(problems, fmt.Sprintf("snapshot directory %q: not a snapshot ID", d.Name()))
		}
	}
	if len(dirs) != n {
		problems = append(problems, fmt.Sprintf("%d snapshot directories (%v) for %d snapshots: orphans left", len(dirs), names, n))
	}
	for _, parent := range []string{
		filepath.Join(e.Daemon.Root, "fs", "cache", ".tmp"),
		filepath.Join(e.Daemon.Root, "fs", "index", ".tmp"),
		filepath.Join(e.Daemon.Root, "snapshotter", "pull"), // parallel pull's staging
	} {
		entries, err := os.ReadDir(parent)
		if errors.Is(err, fs.ErrNotExist) && strings.HasSuffix(parent, "pull") {
			continue // parallel pull never ran
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range entries {
			if !s.IsDir() || !locked(filepath.Join(parent, s.Name())) {
				problems = append(problems, fmt.Sprintf("%s/%s: left by a dead process", parent, s.Name()))
			}
		}
	}
	_ = filepath.WalkDir(filepath.Join(e.Daemon.Root, "fs", "index"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".tmp-") {
			problems = append(problems, fmt.Sprintf("temporary file %s left in the index store", p))
		}
		return nil
	})
	mounts, err := harness.Mounts(e.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for mp := range mounts {
		var st unix.Statfs_t // stat may be answered from the attribute cache
		if err := unix.Statfs(mp, &st); errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED) {
			problems = append(problems, fmt.Sprintf("dead mount left at %s", mp))
		}
	}
	return problems
}

// locked tells whether a live process holds the flock of directory path.
func locked(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// daemonSnapshots is the daemon's snapshotter, asked directly (not
// through containerd, which lists only the snapshots it knows).
func daemonSnapshots(t *testing.T, e *harness.Env) snapshots.Snapshotter {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+e.Daemon.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "soci")
}
