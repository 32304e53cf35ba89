package integration

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// The restart-survival tests: containers keep reading lazily loaded layers
// while the daemon is stopped, killed, upgraded or restarted the way
// systemd restarts the shipped unit, because the FUSE sessions live in a
// separate FUSE host process.

// soakConfig turns the background fetcher and the fetches around
// scattered misses off: the spans no container has read stay in the
// registry, so reads after each step still need the registry (and the FUSE
// host's fetcher), not only the cache.
const soakConfig = defaultDaemonConfig + `
[background_fetch]
  disable = true
[limits]
  neighbour_fetch_bytes = 0
`

// The soak image: one lazily loaded layer of soakFiles incompressible files
// of soakFileSize bytes, indexed with soakSpanSize spans (about a thousand
// spans, so that the probes read a minority of them in a test's time).
const (
	soakFiles    = 4096
	soakFileSize = 16 << 10
	soakSpanSize = 64 << 10
	// soakPause is the pause between two reads of one probe.
	soakPause = "500ms"
)

// soakImage is a pushed soak image: want maps each data file to the line
// `probe sha256` prints for it.
type soakImage struct {
	ref   string
	paths []string
	want  map[string]string
	// spans is about how many spans the data layer has.
	spans int
}

// pushSoakImage builds and pushes a soak image of files data files (seeds
// from seed on). The first layer (the probe and the list of files with
// their digests, /soak.list) has no zTOC and is unpacked normally, so a
// probe keeps running and counting when the lazily loaded layer fails.
func pushSoakImage(t *testing.T, e *harness.Env, name string, files int, seed int64) soakImage {
	t.Helper()
	img := soakImage{want: map[string]string{}}
	var list strings.Builder
	data := []image.Entry{dir("data")}
	for i := range files {
		p := fmt.Sprintf("/data/f%04d", i)
		line := seededSum(p, seed+int64(i), soakFileSize)
		img.paths = append(img.paths, p)
		img.want[p] = line
		hex := strings.Fields(line)[1]
		fmt.Fprintf(&list, "%s %s\n", hex, p)
		data = append(data, image.Entry{Name: p[1:], Type: tar.TypeReg, Mode: 0o644, ModTime: epoch, Size: soakFileSize, Seed: seed + int64(i)})
	}
	base := image.Layer{Entries: []image.Entry{
		dir("bin"), {Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary},
		file("soak.list", []byte(list.String())), dir("out"),
	}}
	spec := image.Spec{Layers: []image.Layer{base, {Entries: data}}, Entrypoint: []string{"/bin/probe"}}
	img.ref = pushV2(t, e, name, buildImage(t, spec), sociimage.Options{SpanSize: soakSpanSize, SkipLayers: []int{0}})
	img.spans = files * (soakFileSize + 512) / soakSpanSize
	return img
}

// sample returns n of the image's data files, chosen at random.
func (img soakImage) sample(n int) []string {
	paths := slices.Clone(img.paths)
	rand.Shuffle(len(paths), func(i, j int) { paths[i], paths[j] = paths[j], paths[i] })
	return paths[:min(n, len(paths))]
}

// waitContainerdReconnected polls until containerd's snapshots calls reach
// the (restarted) daemon, and returns how long that took. containerd's
// connection to a proxy snapshotter backs off after the old daemon went
// (up to a few seconds), and calls in the back-off fail at once with the
// last dial error, however ready the new daemon is.
func waitContainerdReconnected(t *testing.T, ctx context.Context, e *harness.Env) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for {
		_, err := e.Ctr(ctx, "snapshots", "--snapshotter", "soci", "ls")
		if err == nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd does not reach the daemon 30 s after its restart: %v", err)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// checkNewContainer runs a new container of img that reads a sample of its
// files and checks their digests.
func checkNewContainer(t *testing.T, ctx context.Context, e *harness.Env, img soakImage, step string) {
	t.Helper()
	paths := img.sample(16)
	want := map[string]string{}
	for _, p := range paths {
		want[p] = img.want[p]
	}
	args := append([]string{"--snapshotter", "soci", "run", "--rm", "--net", "none", img.ref, "sha256"}, paths...)
	out, err := e.Nerdctl(ctx, args...)
	if err != nil {
		t.Fatalf("%s: new container: %v", step, err)
	}
	checkSums(t, out, want)
	if t.Failed() {
		t.Fatalf("%s: a new container read wrong data", step)
	}
}

// soaker is a container running `probe soak` with its counts file in a host
// directory.
type soaker struct {
	name string
	dir  string
}

// soakCounts is a probe's counts file.
type soakCounts struct {
	reads, errors, mismatches int64
	lastError                 string
}

func (c soakCounts) String() string {
	s := fmt.Sprintf("reads=%d errors=%d mismatches=%d", c.reads, c.errors, c.mismatches)
	if c.lastError != "" {
		s += fmt.Sprintf(" last_error=%q", c.lastError)
	}
	return s
}

func (s soaker) counts() (soakCounts, error) {
	var c soakCounts
	data, err := os.ReadFile(filepath.Join(s.dir, "counts"))
	if err != nil {
		return c, err
	}
	if _, err := fmt.Sscanf(string(data), "reads=%d errors=%d mismatches=%d last_error=%q",
		&c.reads, &c.errors, &c.mismatches, &c.lastError); err != nil {
		return c, fmt.Errorf("counts of %s: %q: %w", s.name, data, err)
	}
	return c, nil
}

// startSoakers starts n containers of img, each reading its files in random
// order with a pause of soakPause between reads.
func startSoakers(t *testing.T, ctx context.Context, e *harness.Env, img soakImage, prefix string, n int) []soaker {
	t.Helper()
	var ss []soaker
	for i := range n {
		s := soaker{name: fmt.Sprintf("%s%d", prefix, i), dir: filepath.Join(t.TempDir(), "out")}
		if err := os.MkdirAll(s.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Nerdctl(ctx, "--snapshotter", "soci", "run", "-d", "--name", s.name, "--net", "none",
			"-v", s.dir+":/out", img.ref, "soak", "/soak.list", "/out/counts", soakPause); err != nil {
			t.Fatalf("start %s: %v", s.name, err)
		}
		ss = append(ss, s)
	}
	// Before the environment closes: containers still reading keep their
	// layers busy, and the FUSE hosts' cleanup waits for them.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, s := range ss {
			if out, err := e.Nerdctl(ctx, "rm", "-f", s.name); err != nil && !strings.Contains(out, "no such container") {
				t.Logf("remove %s: %v", s.name, err)
			}
		}
	})
	return ss
}

// allCounts reads every soaker's counts; a soaker that has not written its
// file yet counts as zero.
func allCounts(t *testing.T, ss []soaker) []soakCounts {
	t.Helper()
	out := make([]soakCounts, len(ss))
	for i, s := range ss {
		c, err := s.counts()
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		out[i] = c
	}
	return out
}

func describeCounts(ss []soaker, cs []soakCounts) string {
	var b strings.Builder
	for i, s := range ss {
		fmt.Fprintf(&b, "\n  %s: %s", s.name, cs[i])
	}
	return b.String()
}

// waitReads polls the soakers' counts until each has read more files whole
// and right since before, and fails as soon as any reports an error or a
// mismatch (a probe that stops counting fails at the deadline). It returns
// the counts it saw last.
func waitReads(t *testing.T, ctx context.Context, e *harness.Env, ss []soaker, before []soakCounts, more int64, timeout time.Duration, step string) []soakCounts {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		now := allCounts(t, ss)
		done := true
		for i, c := range now {
			if c.errors > 0 || c.mismatches > 0 {
				t.Fatalf("%s: probe %s saw failed or wrong reads:%s", step, ss[i].name, describeCounts(ss, now))
			}
			if c.reads < before[i].reads+more {
				done = false
			}
		}
		if done {
			return now
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not every probe read %d more files within %s (before:%s)\nnow:%s\ncontainers:\n%s",
				step, more, timeout, describeCounts(ss, before), describeCounts(ss, now), containerStates(ctx, e))
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitFailures polls until every soaker has counted a failed read since
// before; it returns false (and the counts) when that did not happen
// within timeout.
func waitFailures(ctx context.Context, t *testing.T, ss []soaker, before []soakCounts, timeout time.Duration) ([]soakCounts, bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		now := allCounts(t, ss)
		all := true
		for i, c := range now {
			if c.errors+c.mismatches <= before[i].errors+before[i].mismatches {
				all = false
			}
		}
		if all || time.Now().After(deadline) || ctx.Err() != nil {
			return now, all
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func containerStates(ctx context.Context, e *harness.Env) string {
	out, err := e.Nerdctl(ctx, "ps", "-a", "--format", "{{.Names}} {{.Status}}")
	if err != nil {
		return err.Error()
	}
	return out
}

// cachedSpans counts the span files in the daemon's span cache.
func cachedSpans(e *harness.Env) int {
	n := 0
	_ = filepath.WalkDir(filepath.Join(e.Daemon.Root, "fs", "cache", "sha256"), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

// startSurviveEnv is startEnvWith plus a teardown that leaves no FUSE host
// behind: it closes the environment (which stops the daemon and runs
// `soci-snapshotter-grpc cleanup` with the latest binary the daemon ran),
// then checks that no FUSE host of the root is left (killing any, as an
// error) and detaches what is still mounted.
func startSurviveEnv(t *testing.T, cfg string, start harness.DaemonStarter) *harness.Env {
	t.Helper()
	e := startEnvWith(t, cfg, start)
	t.Cleanup(func() {
		start := time.Now()
		if err := e.Close(); err != nil {
			t.Errorf("stop environment: %v", err)
		}
		t.Logf("environment closed (FUSE hosts cleaned up) in %s", time.Since(start).Round(time.Millisecond))
		hosts, err := harness.KillFuseHosts(e.Daemon.Root)
		if err != nil {
			t.Error(err)
		}
		for _, h := range hosts {
			t.Errorf("FUSE host left after cleanup (killed): pid %d %s", h.Pid, strings.Join(h.Args, " "))
		}
		if err := harness.UnmountUnder(e.Daemon.Root); err != nil {
			t.Error(err)
		}
	})
	return e
}

// removeAll stops and removes the soak containers, removes the images and
// prunes, then waits until no FUSE mount is left under the daemon's root.
func removeAll(t *testing.T, ctx context.Context, e *harness.Env, ss []soaker, imgs ...soakImage) {
	t.Helper()
	var names []string
	for _, s := range ss {
		names = append(names, s.name)
	}
	if len(names) > 0 {
		if _, err := e.Nerdctl(ctx, append([]string{"stop", "-t", "10"}, names...)...); err != nil {
			t.Fatalf("stop containers: %v", err)
		}
		if _, err := e.Nerdctl(ctx, append([]string{"rm"}, names...)...); err != nil {
			t.Fatalf("remove containers: %v", err)
		}
	}
	for _, img := range imgs {
		if _, err := e.Nerdctl(ctx, "rmi", "-f", img.ref); err != nil {
			t.Fatalf("remove image: %v", err)
		}
	}
	if _, err := e.Nerdctl(ctx, "image", "prune", "--all", "--force"); err != nil {
		t.Fatalf("prune images: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mounts, err := harness.Mounts(e.Daemon.Root)
		if err != nil {
			t.Fatal(err)
		}
		var fuse []string
		for p, typ := range mounts {
			if strings.HasPrefix(typ, "fuse") {
				fuse = append(fuse, p+" "+typ)
			}
		}
		snaps, err := e.Ctr(ctx, "snapshots", "--snapshotter", "soci", "ls")
		if err != nil {
			t.Fatal(err)
		}
		rows := snapshotRows(snaps)
		if len(fuse) == 0 && len(rows) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after removing containers and images: FUSE mounts %v, snapshots %v", fuse, rows)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// servedBytes is how many blob bytes the registry has served so far.
func servedBytes(t *testing.T, e *harness.Env) int64 {
	t.Helper()
	n, err := harness.RegistryBytesServed(e.Registry.Log())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// hostGoroutines asks every FUSE host socket of root for its health.
func hostHealths(t *testing.T, ctx context.Context, root string) map[string]harness.HostHealth {
	t.Helper()
	socks, err := harness.HostSockets(root)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]harness.HostHealth{}
	for _, sock := range socks {
		h, err := harness.GetHostHealth(ctx, sock)
		if err != nil {
			t.Errorf("FUSE host health: %v", err)
			continue
		}
		out[sock] = h
	}
	return out
}

// TestSurviveRestartKillUpgrade: ten containers read lazily loaded files
// (mostly still in the registry) continuously while the daemon is, one
// after another, stopped with SIGTERM and started, killed with SIGKILL and
// started, and replaced by a different build (an upgrade). After each step
// a new container reads correctly and every probe has read more files,
// with no failed and no wrong read. At the end, with containers and images
// removed, no FUSE mount is left, the FUSE host of the old build has
// exited, and the remaining host serves nothing and has not leaked
// goroutines.
func TestSurviveRestartKillUpgrade(t *testing.T) {
	began := time.Now()
	ctx := testContext(t, 4*time.Minute)
	type build struct {
		bin  string
		err  error
		took time.Duration
	}
	upgradeDir := t.TempDir()
	built := make(chan build, 1)
	go func() {
		start := time.Now()
		bin, err := harness.BuildDaemon(ctx, upgradeDir, "v0.0.0-survive-upgrade")
		built <- build{bin, err, time.Since(start)}
	}()

	e := startSurviveEnv(t, soakConfig, harness.StartDaemon)
	logMemory(t, e, "idle, nothing mounted")
	oldBin := e.Daemon.Binary()
	img := pushSoakImage(t, e, "survive/a:latest", soakFiles, 1000)
	img2 := pushSoakImage(t, e, "survive/b:latest", 256, 100000)
	if _, err := e.Nerdctl(ctx, "--snapshotter", "soci", "pull", "--quiet", img.ref); err != nil {
		t.Fatal(err)
	}
	if n := fuseLayers(t, e); n != 1 {
		t.Fatalf("want the data layer mounted lazily (1 FUSE mount), got %d", n)
	}
	ss := startSoakers(t, ctx, e, img, "soak", 10)
	counts := waitReads(t, ctx, e, ss, make([]soakCounts, len(ss)), 2, 60*time.Second, "before any restart")
	t.Logf("probes reading:%s", describeCounts(ss, counts))
	t.Logf("setup (env, images, 10 containers reading): %s", time.Since(began).Round(time.Millisecond))
	logMemory(t, e, "10 containers reading")

	var upgrade build
	steps := []struct {
		name string
		do   func() error
	}{
		{"SIGTERM and start", func() error {
			if err := e.Daemon.Signal(syscall.SIGTERM); err != nil {
				return err
			}
			if err := e.Daemon.WaitExit(40 * time.Second); err != nil {
				return fmt.Errorf("daemon after SIGTERM: %w", err)
			}
			return e.Daemon.Start(ctx)
		}},
		{"kill -9 and start", func() error {
			if err := e.Daemon.Kill(); err != nil {
				return err
			}
			return e.Daemon.Start(ctx)
		}},
		{"upgrade to another build", func() error {
			upgrade = <-built
			if upgrade.err != nil {
				return upgrade.err
			}
			if sameFile(t, upgrade.bin, oldBin) {
				return fmt.Errorf("the upgrade build %s has the same bytes as %s", upgrade.bin, oldBin)
			}
			if err := e.Daemon.Signal(syscall.SIGTERM); err != nil {
				return err
			}
			if err := e.Daemon.WaitExit(40 * time.Second); err != nil {
				return fmt.Errorf("daemon after SIGTERM: %w", err)
			}
			return e.Daemon.StartBinary(ctx, upgrade.bin)
		}},
	}
	baseline := map[string]int{} // goroutines of hosts serving nothing, by socket
	for _, step := range steps {
		start := time.Now()
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v\n%s", step.name, err, e.Daemon.LogTail(30))
		}
		restarted := time.Since(start)
		reconnected := waitContainerdReconnected(t, ctx, e)
		// Progress is counted from when the daemon is back: reads made
		// while the old one was still stopping prove nothing.
		counts = allCounts(t, ss)
		served := servedBytes(t, e)
		if step.name == "upgrade to another build" {
			for sock, h := range hostHealths(t, ctx, e.Daemon.Root) {
				if h.Mounts == 0 {
					baseline[sock] = h.Goroutines
				}
			}
		}
		checkNewContainer(t, ctx, e, img, step.name)
		if step.name == "upgrade to another build" {
			// New layers after the upgrade: served by the new build's host,
			// while the old build's host, retired, serves the old ones.
			checkNewContainer(t, ctx, e, img2, step.name+" (an image pulled after it)")
			builds := hostsByBuild(t, ctx, e.Daemon.Root)
			old, cur := builds[oldBin], builds[upgrade.bin]
			if len(old) != 1 || !old[0].Retired || old[0].Mounts == 0 || len(cur) != 1 || cur[0].Retired || cur[0].Mounts == 0 {
				t.Fatalf("after the upgrade, want one retired host of the old build serving the old layers and one host of the new build serving the new ones; got old %+v, new %+v", old, cur)
			}
		}
		counts = waitReads(t, ctx, e, ss, counts, 2, 30*time.Second, step.name)
		if servedBytes(t, e) <= served {
			t.Errorf("%s: the registry served no blob bytes after the step: the reads were not remote", step.name)
		}
		t.Logf("%s: daemon back in %s, containerd reconnected %s later, step checked in %s; %d of ~%d spans of the data layer cached; probe reads so far: %d",
			step.name, restarted.Round(time.Millisecond), reconnected.Round(time.Millisecond), time.Since(start).Round(time.Millisecond),
			cachedSpans(e), img.spans, totalReads(counts))
	}
	t.Logf("upgrade build took %s", upgrade.took.Round(time.Millisecond))
	if cached := cachedSpans(e); cached*10 > img.spans*6 {
		t.Errorf("%d of ~%d spans cached by the last step: the probes no longer read mostly remote data", cached, img.spans)
	}

	end := time.Now()
	removeAll(t, ctx, e, ss, img, img2)
	waitNoHostOf(t, ctx, e.Daemon.Root, oldBin, 30*time.Second)
	// Idle registry connections hold goroutines; stopping the registry
	// closes them.
	if err := e.Registry.Stop(); err != nil {
		t.Fatal(err)
	}
	checkHostsIdle(t, ctx, e.Daemon.Root, baseline, 20*time.Second)
	t.Logf("teardown checks: %s; whole test: %s", time.Since(end).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}

// hostsByBuild maps each executable running a FUSE host of root to the
// health of its hosts.
func hostsByBuild(t *testing.T, ctx context.Context, root string) map[string][]harness.HostHealth {
	t.Helper()
	procs, err := harness.FuseHosts(root)
	if err != nil {
		t.Fatal(err)
	}
	exe := map[int]string{}
	for _, p := range procs {
		exe[p.Pid] = p.Exe
	}
	out := map[string][]harness.HostHealth{}
	for sock, h := range hostHealths(t, ctx, root) {
		bin, ok := exe[h.PID]
		if !ok {
			t.Fatalf("host on %s reports pid %d, which is not a FUSE host process of %s (%v)", sock, h.PID, root, procs)
		}
		out[bin] = append(out[bin], h)
	}
	return out
}

func totalReads(cs []soakCounts) int64 {
	var n int64
	for _, c := range cs {
		n += c.reads
	}
	return n
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	da, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(da) == string(db)
}

// waitNoHostOf polls until no FUSE host of root runs the executable bin.
func waitNoHostOf(t *testing.T, ctx context.Context, root, bin string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		hosts, err := harness.FuseHosts(root)
		if err != nil {
			t.Fatal(err)
		}
		var left []string
		for _, h := range hosts {
			if h.Exe == bin {
				left = append(left, fmt.Sprintf("pid %d %s", h.Pid, strings.Join(h.Args, " ")))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s after its last mount went, the retired FUSE host of %s still runs: %v", timeout, bin, left)
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// checkHostsIdle polls the remaining FUSE hosts until each serves no mount
// and has at most 10 goroutines more than it had while serving nothing
// (baseline, when known).
func checkHostsIdle(t *testing.T, ctx context.Context, root string, baseline map[string]int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		healths := hostHealths(t, ctx, root)
		var busy []string
		for sock, h := range healths {
			base, known := baseline[sock]
			if h.Mounts != 0 || (known && h.Goroutines > base+10) {
				busy = append(busy, fmt.Sprintf("%s: %d mounts, %d goroutines (%d while serving nothing): %.300s",
					filepath.Base(sock), h.Mounts, h.Goroutines, base, h.Raw))
			}
		}
		if len(busy) == 0 {
			for sock, h := range healths {
				t.Logf("remaining FUSE host %s: %d goroutines (baseline %d, known %v)", filepath.Base(sock), h.Goroutines, baseline[sock], baseline[sock] > 0)
			}
			if len(healths) == 0 {
				t.Errorf("no FUSE host answers under %s: nothing to check for leaks", root)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("FUSE hosts not idle %s after everything was removed:\n%s", timeout, strings.Join(busy, "\n"))
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestSIGTERMExitsFast: with containers reading lazily loaded layers,
// SIGTERM makes the daemon exit within 5 s, and the containers keep
// reading (also what is still in the registry) while it is gone.
func TestSIGTERMExitsFast(t *testing.T) {
	began := time.Now()
	ctx := testContext(t, 3*time.Minute)
	e := startSurviveEnv(t, soakConfig, harness.StartDaemon)
	defer func() { t.Logf("test body: %s", time.Since(began).Round(time.Millisecond)) }()
	img := pushSoakImage(t, e, "survive/fast:latest", 1024, 5000)
	ss := startSoakers(t, ctx, e, img, "fast", 3)
	waitReads(t, ctx, e, ss, make([]soakCounts, len(ss)), 2, 60*time.Second, "before SIGTERM")
	start := time.Now()
	if err := e.Daemon.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := e.Daemon.WaitExit(5 * time.Second)
	took := time.Since(start)
	if exited, _ := e.Daemon.Exited(); !exited {
		t.Errorf("daemon still running %s after SIGTERM (want an exit within 5 s)", took.Round(time.Millisecond))
		_ = e.Daemon.Kill()
	} else if err != nil {
		t.Errorf("daemon exited with %v after SIGTERM\n%s", err, e.Daemon.LogTail(20))
	}
	t.Logf("daemon exited %s after SIGTERM", took.Round(time.Millisecond))
	// Counted from when the daemon is gone.
	counts := allCounts(t, ss)
	served := servedBytes(t, e)
	after := waitReads(t, ctx, e, ss, counts, 3, 30*time.Second, "daemon stopped")
	if servedBytes(t, e) <= served {
		t.Errorf("the registry served no blob bytes while the daemon was gone: the reads were not remote")
	}
	t.Logf("probes while the daemon was gone:%s", describeCounts(ss, after))
}

// unitFile is a parsed systemd unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: cannot parse line %q", path, line)
			}
			k = strings.TrimSpace(k)
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	return u
}

// get is the effective value of key (the last assignment), or def.
func (u unitFile) get(section, key, def string) string {
	vs := u[section][key]
	if len(vs) == 0 {
		return def
	}
	return vs[len(vs)-1]
}

// systemdSeconds parses a systemd time span of the forms the shipped unit
// may use: "40", "40s", "1min", "1min 30s", "500ms".
func systemdSeconds(t *testing.T, s string) time.Duration {
	t.Helper()
	var total time.Duration
	for _, f := range strings.Fields(s) {
		num := strings.TrimRightFunc(f, func(r rune) bool { return r < '0' || r > '9' })
		unit := f[len(num):]
		var n int64
		if _, err := fmt.Sscan(num, &n); err != nil {
			t.Fatalf("time span %q: %v", s, err)
		}
		scale := map[string]time.Duration{"": time.Second, "s": time.Second, "sec": time.Second,
			"ms": time.Millisecond, "min": time.Minute, "m": time.Minute, "h": time.Hour}[unit]
		if scale == 0 {
			t.Fatalf("time span %q: unit %q not handled", s, unit)
		}
		total += time.Duration(n) * scale
	}
	return total
}

// verifyUnits runs `systemd-analyze verify` on copies of the shipped units
// in which ExecStart runs bin (verify checks that the executable exists),
// and fails on any complaint: verify reports bad keys and values on its
// output while exiting 0. A copy with a bogus KillMode must draw a
// complaint, or the check could not fail.
func verifyUnits(t *testing.T, ctx context.Context, bin string) {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	units, err := filepath.Glob(filepath.Join(root, "deploy", "*.service"))
	if err != nil || len(units) == 0 {
		t.Fatalf("no units in deploy/ (%v)", err)
	}
	sockets, _ := filepath.Glob(filepath.Join(root, "deploy", "*.socket"))
	units = append(units, sockets...)
	verify := func(rewrite func(string) string) (string, error) {
		dir := t.TempDir()
		var paths []string
		for _, u := range units {
			data, err := os.ReadFile(u)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(string(data), "\n")
			for i, l := range lines {
				if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
					f := strings.Fields(v)
					lines[i] = "ExecStart=" + strings.Join(append([]string{bin}, f[1:]...), " ")
				}
			}
			p := filepath.Join(dir, filepath.Base(u))
			if err := os.WriteFile(p, []byte(rewrite(strings.Join(lines, "\n"))), 0o644); err != nil {
				t.Fatal(err)
			}
			paths = append(paths, p)
		}
		return harness.Run(ctx, nil, "systemd-analyze", append([]string{"verify", "--man=no"}, paths...)...)
	}
	out, err := verify(func(s string) string { return s })
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify of the shipped units: %v\n%s", err, out)
	}
	out, _ = verify(func(s string) string {
		return strings.Replace(s, "[Service]\n", "[Service]\nKillMode=bogus\n", 1)
	})
	if strings.TrimSpace(out) == "" {
		t.Errorf("systemd-analyze verify did not complain about KillMode=bogus: the check cannot fail")
	}
}

// systemdStop does to the unit's processes what `systemctl stop` does with
// the given KillMode: SIGTERM to the main process (process, mixed) or to
// every process of the control group (control-group), SIGKILL after
// timeout to the main process (process) or to all that is left
// (control-group, mixed; mixed kills the rest when the main process is
// gone too).
func systemdStop(t *testing.T, ctx context.Context, d *harness.Daemon, cg *harness.UnitCgroup, mode string, timeout time.Duration) {
	t.Helper()
	switch mode {
	case "process", "mixed":
		if err := d.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		_ = d.WaitExit(timeout)
		if exited, _ := d.Exited(); !exited {
			t.Logf("KillMode=%s: main process alive %s after SIGTERM: SIGKILL", mode, timeout)
			if err := d.Kill(); err != nil {
				t.Fatal(err)
			}
		}
		if mode == "mixed" {
			if _, err := cg.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if err := cg.WaitEmpty(ctx, 10*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	case "control-group":
		pids, err := cg.Signal(syscall.SIGTERM)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("KillMode=control-group: SIGTERM to %v", pids)
		if err := cg.WaitEmpty(ctx, timeout); err != nil {
			t.Logf("KillMode=control-group: %v: SIGKILL", err)
			if _, err := cg.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if err := cg.WaitEmpty(ctx, 10*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		d.WaitExit(time.Second)
	default:
		t.Fatalf("KillMode=%s: not modelled", mode)
	}
}

// TestSystemdRestartKillMode: the shipped units pass `systemd-analyze
// verify`; a `systemctl restart` of the shipped service, played with its
// KillMode on a cgroup standing in for the unit's, leaves running
// containers reading. The negative control plays KillMode=control-group
// (every process of the unit, FUSE hosts included, is signalled): the
// containers' reads fail. That is why the unit says KillMode=process.
func TestSystemdRestartKillMode(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	verifyUnits(t, ctx, filepath.Join(tools.Ours, "soci-snapshotter-grpc"))
	unit := parseUnit(t, filepath.Join("..", "deploy", "soci-snapshotter.service"))
	killMode := unit.get("Service", "KillMode", "control-group")
	timeout := systemdSeconds(t, unit.get("Service", "TimeoutStopSec", "90s"))
	t.Logf("shipped unit: KillMode=%s TimeoutStopSec=%s", killMode, timeout)

	cg, err := harness.NewUnitCgroup("soci-unit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cg.Remove(); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
	startInUnit := func(ctx context.Context, d *harness.Daemon) error { return d.StartInCgroup(ctx, cg) }
	e := startSurviveEnv(t, soakConfig, startInUnit)
	img := pushSoakImage(t, e, "survive/unit:latest", 1024, 9000)
	ss := startSoakers(t, ctx, e, img, "unit", 3)
	waitReads(t, ctx, e, ss, make([]soakCounts, len(ss)), 2, 60*time.Second, "before the restart")

	restart := func(mode string) {
		pids, _ := cg.Procs()
		t.Logf("systemctl restart with KillMode=%s; processes of the unit: %v", mode, pids)
		systemdStop(t, ctx, e.Daemon, cg, mode, timeout)
		if err := startInUnit(ctx, e.Daemon); err != nil {
			t.Fatal(err)
		}
		t.Logf("containerd reconnected %s after the start", waitContainerdReconnected(t, ctx, e).Round(time.Millisecond))
	}
	step := fmt.Sprintf("systemctl restart (shipped KillMode=%s)", killMode)
	restart(killMode)
	counts := allCounts(t, ss)
	checkNewContainer(t, ctx, e, img, step)
	waitReads(t, ctx, e, ss, counts, 2, 30*time.Second, step)

	// Negative control: failures counted from before the stop.
	counts = allCounts(t, ss)
	restart("control-group")
	after, failed := waitFailures(ctx, t, ss, counts, 20*time.Second)
	t.Logf("after a restart with KillMode=control-group:%s", describeCounts(ss, after))
	if !failed {
		t.Errorf("with KillMode=control-group the containers kept reading: the test cannot tell the kill modes apart")
	}
}

// logMemory logs the peak RSS (VmHWM) so far of the daemon and of each of
// its FUSE hosts: the figures the restart-survival note quotes.
func logMemory(t *testing.T, e *harness.Env, when string) {
	t.Helper()
	line := when + ": peak RSS"
	if st, err := harness.ReadProcStats(e.Daemon.Pid()); err == nil {
		line += fmt.Sprintf(" daemon %.1f MiB", float64(st.PeakRSS)/(1<<20))
	}
	hosts, err := harness.FuseHosts(e.Daemon.Root)
	if err != nil {
		t.Logf("%s: %v", line, err)
		return
	}
	for _, h := range hosts {
		if st, err := harness.ReadProcStats(h.Pid); err == nil {
			line += fmt.Sprintf(", FUSE host (pid %d) %.1f MiB", h.Pid, float64(st.PeakRSS)/(1<<20))
		}
	}
	t.Log(line)
}
