package integration

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// closedHost is 127.0.0.1 with a port nobody listens on: an unreachable
// origin registry.
func closedHost(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	return host
}

func writeHostsToml(t *testing.T, root, origin, mirror string) {
	t.Helper()
	dir := filepath.Join(root, origin)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+origin, "http://"+mirror)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
}

// mirrorServedAll checks that the mirror's access log has the image's
// requests, each naming the origin with ?ns=, and that it served blob bytes.
func mirrorServedAll(t *testing.T, logPath, origin string) {
	t.Helper()
	served, err := harness.RegistryBytesServed(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if served == 0 {
		t.Error("the mirror served no blob bytes")
	}
	reqs, err := harness.RegistryRequests(logPath)
	if err != nil {
		t.Fatal(err)
	}
	ranges := 0
	for _, r := range reqs {
		// Only the daemon reads layers by range: these are its span fetches.
		u, err := url.Parse(r.URI)
		if err == nil && r.Method == "GET" && r.Status == 206 && strings.Contains(u.Path, "/blobs/") && u.Query().Get("ns") == origin {
			ranges++
		}
	}
	if ranges == 0 {
		t.Errorf("the mirror served no range reads naming the origin %s", origin)
	}
}

// TestMirrorHostsToml: a mirror in hosts.toml serves every fetch (manifest,
// index, zTOCs, spans) of a lazily loaded image whose origin is down. The
// hosts directory is a temporary one, named to the daemon by [resolver]
// config_path (after a directory without the origin's, to use the list) and
// to nerdctl by --hosts-dir.
func TestMirrorHostsToml(t *testing.T) {
	hostsDir, otherDir := t.TempDir(), t.TempDir()
	cfg := defaultDaemonConfig + fmt.Sprintf("\n[resolver]\n  config_path = %q\n", otherDir+":"+hostsDir)
	e := startEnv(t, cfg)
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	pushV2(t, e, "lazy/mirrored:latest", buildImage(t, img.spec), sociimage.Options{SpanSize: 1 << 20})
	origin := closedHost(t)
	writeHostsToml(t, hostsDir, origin, e.Registry.Host)
	ref := origin + "/lazy/mirrored:latest"
	checkLazyRun(t, ctx, e, ref, img, 3, "--hosts-dir", hostsDir)
	mirrorServedAll(t, e.Registry.Log(), origin)
}

// TestMirrorResolverConfig: [[resolver.host."<registry>".mirrors]] in the
// daemon's config are mirrors too (nerdctl gets a hosts.toml of its own).
func TestMirrorResolverConfig(t *testing.T) {
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t, 5*time.Minute)
	mirror, err := harness.StartRegistry(ctx, filepath.Join(tools.Bin, "registry"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mirror.Stop() })
	origin := closedHost(t)
	cfg := defaultDaemonConfig + fmt.Sprintf(`
[[resolver.host.%q.mirrors]]
  host = %q
  insecure = true
  request_timeout_sec = 20
`, origin, mirror.Host)
	e := startEnv(t, cfg)
	img := newLayeredImage()
	mirrorRef := mirror.Host + "/lazy/mirrored:latest"
	if _, _, err := sociimage.PushV2(ctx, mirrorRef, buildImage(t, img.spec), sociimage.Options{SpanSize: 1 << 20}); err != nil {
		t.Fatalf("push to the mirror: %v", err)
	}
	nerdctlHosts := t.TempDir()
	writeHostsToml(t, nerdctlHosts, origin, mirror.Host)
	ref := origin + "/lazy/mirrored:latest"
	checkLazyRun(t, ctx, e, ref, img, 3, "--hosts-dir", nerdctlHosts)
	mirrorServedAll(t, mirror.Log(), origin)
}
