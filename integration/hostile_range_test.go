package integration

import (
	"archive/tar"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// rangeRSSBound is the most the daemon's peak RSS (VmHWM) may reach while
// a registry answers range reads with hostile responses, and
// hostileRSSGrowth how much one case may raise it: a daemon that held a
// whole-blob answer (84 MiB) or a long body's junk (32 MiB) would exceed it.
const (
	rangeRSSBound    = 300 << 20
	hostileRSSGrowth = 32 << 20
)

// rangeCase is one kind of hostile answer to the daemon's range reads.
type rangeCase struct {
	mode harness.Hostility
	// cause must match a daemon log line (naming the layer) written while
	// the case ran; nil: the answer is legitimate HTTP and needs no line.
	cause *regexp.Regexp
	// failure is the soci_failures_total kind a failed read counts.
	failure string
	// mayServe: the answer held the right bytes somewhere, so the daemon may
	// serve them (or refuse the answer); otherwise the read must fail.
	mayServe bool
	// mustServe: the read must succeed (a legitimate answer).
	mustServe bool
}

// hostileRangeCases, in the order they run. Redirect comes last: the daemon
// remembers where it was sent (when the read succeeded) and reads from there
// until that fails.
var hostileRangeCases = []rangeCase{
	{mode: harness.WholeBlob, failure: "fetch", cause: regexp.MustCompile(`(?i)(ignor\w*( the)? range|whole[- ]blob|status 200|200 OK|not a range)`), mayServe: true},
	{mode: harness.ShiftedRange, failure: "fetch", cause: regexp.MustCompile(`(?i)content-range`)},
	{mode: harness.ShortRange, failure: "fetch", cause: regexp.MustCompile(`(?i)(content-range|short|unexpected EOF)`)},
	{mode: harness.GarbageRange, failure: "fetch", cause: regexp.MustCompile(`(?i)content-range`), mayServe: true},
	{mode: harness.WrongTotal, failure: "fetch", cause: regexp.MustCompile(`(?i)(content-range|total|blob size|size mismatch)`), mayServe: true},
	{mode: harness.TruncatedBody, failure: "fetch", cause: regexp.MustCompile(`(?i)(unexpected EOF|short read|truncat|cut short)`)},
	{mode: harness.LongBody, failure: "fetch", cause: regexp.MustCompile(`(?i)(longer|extra|trailing|more than|exceed|content-length)`), mayServe: true},
	{mode: harness.CorruptBytes, failure: "verification", cause: regexp.MustCompile(`(?i)(digest mismatch|verif)`)},
	{mode: harness.RedirectChallenge, failure: "fetch", cause: regexp.MustCompile(`(?i)(401|unauthori[sz]ed|basic auth|credential)`)},
	{mode: harness.Redirect, failure: "fetch", mayServe: true, mustServe: true},
}

// hostileFile is the file case i reads.
func hostileFile(i int) string { return fmt.Sprintf("/h/case%d", i) }

const (
	hostileFileSize = 2 << 20
	// hostileGap separates the case files by more than the read-ahead of
	// reading one (it grows with the run: at most a file's size), so no
	// case finds its file fetched by an earlier one.
	hostileGap = 4 << 20
	// hostileLayerSize is the big layer's data: large enough that a daemon
	// holding it whole would show in its RSS.
	hostileLayerSize = 84 << 20
)

// hostileRangeImage is the probe plus one ~84 MiB layer of incompressible
// files: /h/warm, then per case a gap and /h/case<i> (2 MiB, 1 MiB spans),
// a filler, and last the whole-blob case's file, so that a whole-blob answer
// carries ~80 MiB before the asked bytes.
func hostileRangeImage() (image.Spec, map[string]string) {
	want := map[string]string{}
	entries := []image.Entry{dir("h")}
	add := func(path string, size, seed int64) {
		entries = append(entries, image.Entry{Name: path[1:], Type: tar.TypeReg, Mode: 0o644, ModTime: epoch, Size: size, Seed: seed})
		want[path] = seededSum(path, seed, size)
	}
	add("/h/warm", 256<<10, 700)
	used := int64(256 << 10)
	var whole int
	for i, c := range hostileRangeCases {
		if c.mode == harness.WholeBlob {
			whole = i
			continue
		}
		add(fmt.Sprintf("/h/gap%d", i), hostileGap, int64(710+i))
		add(hostileFile(i), hostileFileSize, int64(750+i))
		used += hostileGap + hostileFileSize
	}
	add("/h/filler", hostileLayerSize-used-hostileFileSize, 799)
	add(hostileFile(whole), hostileFileSize, int64(750+whole))
	base := image.Layer{Entries: []image.Entry{dir("bin"), {Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary}}}
	return image.Spec{Layers: []image.Layer{base, {Entries: entries}}, Entrypoint: []string{"/bin/probe"}}, want
}

// TestHostileRangeResponses puts a proxy that misbehaves on command between
// the daemon and an htpasswd-protected registry and, for each kind of
// hostile answer to the daemon's range reads of a lazily loaded layer, runs
// a container reading a file of that layer. For every case the daemon
// survives (same pid), its peak RSS stays under rangeRSSBound, the read
// returns the right bytes or fails with EIO within a bound (counting a
// failure of the case's kind in the metrics), a daemon log line names the
// cause, and once the registry behaves again every file
// reads correctly (nothing bad was cached). The redirect goes to another
// loopback host, which must never see the registry's credentials.
func TestHostileRangeResponses(t *testing.T) {
	const user, password = "hostile-user", "pw-Tb61Ke0pQs"
	dockerConfig := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dockerConfig) // inherited by the daemon and nerdctl
	metricsCfg, url := metricsConfig(t)
	// Each case's file is fetched on its own read, through the answer its
	// case gets: no background walk, no fetches around scattered misses
	// (they would load a later case's span during an earlier case).
	e := startEnv(t, metricsCfg+defaultDaemonConfig+`
[background_fetch]
  disable = true
[limits]
  neighbour_fetch_bytes = 0
`)
	ctx := testContext(t, 6*time.Minute)
	spec, want := hostileRangeImage()
	built := buildImage(t, spec)
	pushV2(t, e, "hostile/range:latest", built, sociimage.Options{SpanSize: 1 << 20})
	target := built.LayerDescs[1]
	if target.Size < 80<<20 {
		t.Fatalf("the hostile layer is %d bytes, want >= 80 MiB", target.Size)
	}

	// An htpasswd-protected registry on the same storage, behind the proxy.
	dir := t.TempDir()
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := harness.WriteHtpasswd(htpasswd, user, password); err != nil {
		t.Fatal(err)
	}
	reg, err := harness.StartRegistryWith(ctx, filepath.Join(e.Tools.Bin, "registry"), dir,
		harness.RegistryOptions{Storage: e.Registry.Storage, Htpasswd: htpasswd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Stop() })
	proxy, err := harness.StartHostileProxy(reg.Host, e.Registry.Storage, "127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	cfg := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, proxy.Host, auth)
	if err := os.WriteFile(filepath.Join(dockerConfig, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ref := proxy.Host + "/hostile/range:latest"

	// read runs a container that prints the sha256 of each path, bounded
	// by its own deadline so that a hung read fails the test instead of
	// stalling it.
	read := func(paths ...string) (map[string]string, time.Duration) {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		start := time.Now()
		args := append([]string{"--snapshotter", "soci", "run", "--rm", "--net", "none", ref, "sha256"}, paths...)
		out, err := e.Nerdctl(rctx, args...)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("run container reading %v (after %s): %v", paths, took.Round(time.Millisecond), err)
		}
		got := map[string]string{}
		for _, line := range strings.Split(out, "\n") {
			line = strings.TrimSpace(line)
			if f := strings.Fields(line); len(f) >= 2 && strings.HasPrefix(f[0], "/") {
				got[f[0]] = line
			}
		}
		return got, took
	}

	// Registry data is handled by the FUSE host: it must survive, bounded.
	pid := e.Daemon.HostPid()
	checkDaemon := func(phase string) int64 {
		t.Helper()
		if got := e.Daemon.HostPid(); got != pid {
			t.Fatalf("%s: FUSE host pid %d, was %d", phase, got, pid)
		}
		st, err := harness.ReadProcStats(pid)
		if err != nil || st.PeakRSS == 0 {
			t.Fatalf("%s: FUSE host (pid %d) is gone: %v", phase, pid, err)
		}
		if st.PeakRSS > rangeRSSBound {
			t.Errorf("%s: FUSE host peak RSS %d MiB, bound %d MiB", phase, st.PeakRSS>>20, rangeRSSBound>>20)
		}
		return st.PeakRSS
	}

	// Warm up: pull, mount lazily, read a little of the big layer.
	got, slowest := read("/h/warm")
	checkSums(t, mapLines(got), map[string]string{"/h/warm": want["/h/warm"]})
	if n := fuseLayers(t, e); n != 2 {
		t.Fatalf("want 2 lazily loaded layers, got %d", n)
	}
	rssBase := checkDaemon("warm-up")
	t.Logf("after warm-up: daemon peak RSS %d MiB, container run %s", rssBase>>20, slowest.Round(time.Millisecond))
	// A failing read ends within the span fetch bound plus what a
	// container run costs anyway.
	bound := span.DefaultFetchTimeout + slowest + 10*time.Second

	var summary []string
	var paths []string
	var lastFailure time.Time
	for i, c := range hostileRangeCases {
		path := hostileFile(i)
		paths = append(paths, path)
		logStart := logSize(t, e)
		rssBefore := checkDaemon("before " + c.mode.String())
		failedBefore := failures(scrape(t, url), c.failure)
		proxy.Set(target.Digest.String(), c.mode)
		got, took := read(path)
		proxy.Set("", harness.Honest)
		rss := checkDaemon(c.mode.String())
		if rss-rssBefore > hostileRSSGrowth {
			t.Errorf("%s: daemon peak RSS grew by %d MiB (to %d MiB), bound %d MiB", c.mode, (rss-rssBefore)>>20, rss>>20, hostileRSSGrowth>>20)
		}
		line := got[path]
		served := line == want[path]
		eio := strings.Contains(line, "ERROR") && strings.Contains(line, "input/output error")
		failed := failures(scrape(t, url), c.failure) - failedBefore
		cause := rangeCauseLine(t, e, logStart, target.Digest.Encoded(), c.cause)
		outcome := "EIO"
		if served {
			outcome = "correct bytes"
		} else {
			lastFailure = time.Now()
		}
		t.Logf("%-22s %3d hostile answers, %-13s in %6s, peak RSS %3d MiB, %v %s failures, log: %s",
			c.mode, proxy.Served(c.mode), outcome, took.Round(time.Millisecond), rss>>20, failed, c.failure, cause)
		summary = append(summary, fmt.Sprintf("%s: %s, %d MiB", c.mode, outcome, rss>>20))
		switch {
		case proxy.Served(c.mode) == 0:
			t.Errorf("%s: the proxy gave no hostile answer: the case tested nothing", c.mode)
		case c.mustServe && !served:
			t.Errorf("%s: read %q, want %q", c.mode, line, want[path])
		case served && !c.mayServe:
			t.Errorf("%s: the daemon served bytes the registry never sent for that range", c.mode)
		case !served && !eio:
			t.Errorf("%s: read %q, want the right sum or an I/O error", c.mode, line)
		case !served && failed == 0:
			t.Errorf("%s: the read failed but soci_failures_total{kind=%q} did not move", c.mode, c.failure)
		}
		if took > bound {
			t.Errorf("%s: the read took %s, bound %s", c.mode, took.Round(time.Millisecond), bound)
		}
		// The log line is the contract here: the README's troubleshooting
		// section tells an operator whose read fails with EIO that the
		// daemon log names the layer and the registry's error.
		if c.cause != nil && cause == "" {
			t.Errorf("%s: no daemon log line naming layer %s matches %q", c.mode, target.Digest, c.cause)
		}
	}

	// The redirect target is another host: it must never get the
	// registry's credentials, and the pre-signed URL's signature stays out
	// of the log.
	store := proxy.StoreRequests()
	if len(store) == 0 {
		t.Errorf("the redirect target got no request")
	}
	for _, h := range store {
		if h.Get("Authorization") != "" {
			t.Errorf("the redirect target %s got an Authorization header", proxy.StoreHost())
		}
	}
	var names []string
	if len(store) > 0 {
		for k := range store[0] {
			names = append(names, k)
		}
		sort.Strings(names)
	}
	t.Logf("redirect target %s got %d requests, none with Authorization: %v; headers of the first: %v",
		proxy.StoreHost(), len(store), !hasAuth(store), names)

	// The registry behaves again (and the redirect target is gone, so the
	// daemon must go back to the registry): every file reads correctly.
	if err := proxy.CloseStore(); err != nil {
		t.Fatal(err)
	}
	// A span whose fetch failed fails new reads for span.DefaultFailHold;
	// the cases after the last failure usually took longer than that.
	if d := span.DefaultFailHold - time.Since(lastFailure); d > 0 {
		time.Sleep(d + 100*time.Millisecond)
	}
	got, _ = read(append(paths, "/h/warm")...)
	for _, p := range append(paths, "/h/warm") {
		if got[p] != want[p] {
			t.Errorf("after the registry behaves again: %q, want %q", got[p], want[p])
		}
	}
	checkDaemon("after the registry behaves again")

	// The log is the state here: credentials must never reach it.
	logs, err := os.ReadFile(e.Daemon.Log())
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{password, auth, harness.RedirectSecret} {
		if strings.Contains(string(logs), secret) {
			t.Errorf("the daemon log holds a secret (%.4s...)", secret)
		}
	}
	t.Logf("summary: %s", strings.Join(summary, "; "))
}

// mapLines turns the probe lines by path back into the output checkSums reads.
func mapLines(m map[string]string) string {
	var b strings.Builder
	for _, l := range m {
		b.WriteString(l + "\n")
	}
	return b.String()
}

func hasAuth(hs []http.Header) bool {
	for _, h := range hs {
		if h.Get("Authorization") != "" {
			return true
		}
	}
	return false
}

func logSize(t *testing.T, e *harness.Env) int64 {
	t.Helper()
	st, err := os.Stat(e.Daemon.Log())
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// rangeCauseLine returns the first daemon log line after offset from that names
// the layer (its hex digest) and matches cause, shortened; "" when none
// does (or cause is nil).
func rangeCauseLine(t *testing.T, e *harness.Env, from int64, layerHex string, cause *regexp.Regexp) string {
	t.Helper()
	if cause == nil {
		return "(none needed)"
	}
	data, err := os.ReadFile(e.Daemon.Log())
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data[from:]), "\n") {
		if strings.Contains(line, layerHex) && cause.MatchString(line) {
			if len(line) > 400 {
				line = line[:400] + "..."
			}
			return line
		}
	}
	return ""
}
