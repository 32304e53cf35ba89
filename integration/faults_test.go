package integration

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// faultFiles is how many files the fault image has; each phase of the test
// reads files no earlier phase read, so that nothing comes from a cache.
// faultFiles: f0-f3 are read before the outage, f4 and f5 are never read
// (a gap wider than any read-ahead of a single file), f6 and f7 during and
// after it.
const faultFiles = 8

// faultImage is the probe plus /f/f<i>: incompressible files of 2.5 MiB,
// three 1 MiB spans each.
func faultImage() (image.Spec, map[string]string) {
	want := map[string]string{}
	entries := []image.Entry{dir("f")}
	for i := range faultFiles {
		data := randomBytes(int64(500+i), 5<<19)
		name := fmt.Sprintf("f/f%d", i)
		entries = append(entries, image.Entry{Name: name, Type: tar.TypeReg, Mode: 0o644, ModTime: epoch, Data: data})
		sum := sha256.Sum256(data)
		want["/"+name] = "/" + name + " " + hex.EncodeToString(sum[:])
	}
	base := image.Layer{Entries: []image.Entry{dir("bin"), {Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary}}}
	return image.Spec{Layers: []image.Layer{base, {Entries: entries}}, Entrypoint: []string{"/bin/probe"}}, want
}

// goroutines reads the daemon's goroutine count from its pprof endpoint.
func goroutines(t *testing.T, sock string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := c.Get("http://daemon/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatalf("goroutine profile: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var n int
	if _, err := fmt.Sscanf(string(body), "goroutine profile: total %d", &n); err != nil {
		t.Fatalf("goroutine profile: %v:\n%.300s", err, body)
	}
	return n, string(body)
}

// TestFaultInjection puts a proxy between the daemon and the registry and,
// while a lazily loaded image's files are read by containers, resets
// connections, answers 503s, and takes the registry away for 30 s. Reads
// survive resets and 503 bursts (retries), fail with EIO within the bound
// during the outage, succeed once it is over, and the daemon leaks no
// goroutines.
func TestFaultInjection(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "debug.sock")
	cfg := fmt.Sprintf("debug_address = %q\n", sock) + defaultDaemonConfig + `
[background_fetch]
  disable = true
`
	e := startEnv(t, cfg)
	ctx := testContext(t, 8*time.Minute)
	spec, want := faultImage()
	pushV2(t, e, "fault/img:latest", buildImage(t, spec), sociimage.Options{SpanSize: 1 << 20})
	proxy, err := harness.StartFaultProxy(e.Registry.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	ref := proxy.Host + "/fault/img:latest"

	read := func(path string) (string, time.Duration) {
		start := time.Now()
		out, err := e.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", ref, "sha256", path)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("run container reading %s: %v", path, err)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, path+" ") {
				return strings.TrimSpace(line), took
			}
		}
		t.Fatalf("no line for %s in:\n%s", path, out)
		return "", 0
	}
	expectOK := func(phase string, i int) time.Duration {
		path := fmt.Sprintf("/f/f%d", i)
		line, took := read(path)
		if line != want[path] {
			t.Fatalf("%s: got %q, want %q", phase, line, want[path])
		}
		t.Logf("%s: %s read in %s", phase, path, took.Round(time.Millisecond))
		return took
	}
	expectFaults := func(phase string, want int) {
		if got, _ := proxy.Counts(); got != want {
			t.Fatalf("%s: proxy injected %d faults in total, want %d", phase, got, want)
		}
	}

	slowest := expectOK("healthy", 0) // pulls the image and mounts it lazily
	if n := fuseLayers(t, e); n != 2 {
		t.Fatalf("want 2 lazily loaded layers, got %d", n)
	}
	slowest = max(slowest, expectOK("healthy", 1))
	before, _ := goroutines(t, sock)

	proxy.ResetNext(3)
	expectOK("connection resets", 2)
	expectFaults("connection resets", 3)

	proxy.FailNext(4, http.StatusServiceUnavailable)
	expectOK("503 burst", 3)
	expectFaults("503 burst", 7)

	// The outage: every read of data not yet fetched fails with EIO within
	// the span fetch bound (10 s) plus what a container run costs anyway.
	bound := 10*time.Second + slowest + 5*time.Second
	proxy.SetDown(true)
	outage := time.Now()
	reads := 0
	for time.Since(outage) < 30*time.Second {
		path := fmt.Sprintf("/f/f%d", 6+reads%2)
		line, took := read(path)
		reads++
		t.Logf("outage +%s: %q after %s", time.Since(outage).Round(time.Second), line, took.Round(time.Millisecond))
		if !strings.Contains(line, "ERROR") || !strings.Contains(line, "input/output error") {
			t.Errorf("during the outage %s read %q, want an I/O error", path, line)
		}
		if took > bound {
			t.Errorf("a read during the outage took %s, bound %s", took, bound)
		}
	}
	proxy.SetDown(false)
	// A span's failed fetch fails new reads for span.DefaultFailHold more.
	time.Sleep(span.DefaultFailHold + 500*time.Millisecond)
	if reads < 2 {
		t.Errorf("only %d reads during the outage", reads)
	}
	expectOK("after the outage", 6)
	expectOK("after the outage", 7)

	// Goroutines settle back (idle connections, finished fetches).
	var after int
	var profile string
	for deadline := time.Now().Add(20 * time.Second); ; {
		after, profile = goroutines(t, sock)
		if after <= before+10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("daemon goroutines: %d before the faults, %d after", before, after)
	if after > before+10 {
		t.Errorf("daemon goroutines grew from %d to %d:\n%s", before, after, profile)
	}
}
