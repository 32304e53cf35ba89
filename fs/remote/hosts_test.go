package remote

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes/docker"
)

// writeHostsToml configures, in a fresh hosts directory, mirror as the
// first endpoint of origin.
func writeHostsToml(t *testing.T, origin, mirror string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, strings.Replace(origin, ":", "_", 1)+"_")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", origin, mirror)
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestHostsTomlMirrorFirst(t *testing.T) {
	origin, mirror := newFakeRegistry(t), newFakeRegistry(t)
	hostsDir := writeHostsToml(t, origin.host(), mirror.host())
	c := New(Options{HostsDirs: []string{t.TempDir(), hostsDir}})
	ctx := context.Background()
	ref := origin.ref("team/app")

	onMirror := mirror.addBlob([]byte("cached on the mirror"))
	got, err := c.FetchBlob(ctx, ref, onMirror)
	if err != nil || string(got) != "cached on the mirror" {
		t.Fatalf("got %q, %v", got, err)
	}
	if origin.hitCount("blobs") != 0 || mirror.hitCount("blobs") != 1 {
		t.Fatalf("origin %d, mirror %d blob requests", origin.hitCount("blobs"), mirror.hitCount("blobs"))
	}
	req := mirror.requests[0]
	if req.URL.Path != "/v2/team/app/blobs/"+onMirror.Digest.String() || req.URL.Query().Get("ns") != origin.host() {
		t.Fatalf("mirror request %s", req.URL)
	}

	// Content the mirror lacks comes from the origin.
	onOrigin := origin.addBlob([]byte("only at the origin"))
	if _, err := c.FetchBlob(ctx, ref, onOrigin); err != nil {
		t.Fatal(err)
	}
	if origin.hitCount("blobs") != 1 || mirror.hitCount("blobs") != 2 {
		t.Fatalf("origin %d, mirror %d blob requests", origin.hitCount("blobs"), mirror.hitCount("blobs"))
	}
	if q := origin.requests[0].URL.RawQuery; q != "" {
		t.Fatalf("origin request has query %q", q)
	}

	// The mirror lacks the referrers capability: only the origin is asked.
	subject, _ := testManifest(t, origin)
	if _, err := c.Referrers(ctx, ref, subject, ""); err == nil {
		t.Fatal("expected no referrers")
	}
	if mirror.hitCount("referrers") != 0 || origin.hitCount("referrers") != 1 {
		t.Fatalf("origin %d, mirror %d referrers requests", origin.hitCount("referrers"), mirror.hitCount("referrers"))
	}
}

func TestPlainHTTPHosts(t *testing.T) {
	c := New(Options{Insecure: []string{"reg.example:5000", "other.example"}})
	ctx := context.Background()
	for host, scheme := range map[string]string{
		"localhost:5000":     "http",
		"127.0.0.1:5000":     "http",
		"[::1]:5000":         "http",
		"reg.example:5000":   "http",
		"reg.example":        "https",
		"other.example":      "http",
		"other.example:8443": "http",
		"secure.example":     "https",
	} {
		hosts, err := c.registryHosts(ctx, host)
		if err != nil {
			t.Fatal(err)
		}
		if len(hosts) != 1 || hosts[0].Scheme != scheme || hosts[0].Host != host {
			t.Errorf("%s: %+v, want scheme %s", host, hosts, scheme)
		}
	}
	hub, err := c.registryHosts(ctx, "docker.io")
	if err != nil || hub[0].Host != "registry-1.docker.io" || hub[0].Scheme != "https" {
		t.Errorf("docker.io: %+v, %v", hub, err)
	}
	if isMirror(hub[0], "docker.io") || !isMirror(docker.RegistryHost{Host: "m:1"}, "docker.io") {
		t.Error("isMirror")
	}
}

func TestRegistryHostsAreReused(t *testing.T) {
	c := New(Options{})
	a, _ := c.registryHosts(context.Background(), "r.example")
	b, _ := c.registryHosts(context.Background(), "r.example")
	if a[0].Client != b[0].Client || a[0].Authorizer != b[0].Authorizer {
		t.Fatal("registry hosts configured twice")
	}
}

func TestDockerConfigCredentials(t *testing.T) {
	dir := t.TempDir()
	cfg := `{"auths": {
		"https://index.docker.io/v1/": {"auth": "aHViOmh1YnB3"},
		"127.0.0.1:5000": {"auth": "dTpw"},
		"https://ghcr.io": {"identitytoken": "tok"}
	}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	creds := DockerConfigCredentials(dir)
	for host, want := range map[string][2]string{
		"registry-1.docker.io": {"hub", "hubpw"},
		"docker.io":            {"hub", "hubpw"},
		"127.0.0.1:5000":       {"u", "p"},
		"ghcr.io":              {"", "tok"},
		"quay.io":              {"", ""},
	} {
		u, s, err := creds(host)
		if err != nil || u != want[0] || s != want[1] {
			t.Errorf("%s: %q %q %v", host, u, s, err)
		}
	}
	if u, s, err := DockerConfigCredentials(t.TempDir())("x"); u != "" || s != "" || err != nil {
		t.Errorf("missing file: %q %q %v", u, s, err)
	}
}

// TestDockerCredentialHelpers: credHelpers (per registry) and credsStore
// (all others) run docker-credential-<name> from PATH.
func TestDockerCredentialHelpers(t *testing.T) {
	bin := t.TempDir()
	helper := func(name, user, secret string) {
		script := "#!/bin/sh\nread host\nif [ \"$host\" = \"nothing.example\" ]; then echo 'credentials not found in native keychain'; exit 1; fi\n" +
			"printf '{\"ServerURL\":\"%s\",\"Username\":\"" + user + "\",\"Secret\":\"" + secret + "\"}' \"$host\"\n"
		if err := os.WriteFile(filepath.Join(bin, "docker-credential-"+name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	helper("per", "helper-user", "helper-secret")
	helper("store", "store-user", "store-secret")
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	dir := t.TempDir()
	cfg := `{"credsStore": "store", "credHelpers": {"private.example": "per"}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	creds := DockerConfigCredentials(dir)
	for host, want := range map[string][2]string{
		"private.example": {"helper-user", "helper-secret"},
		"other.example":   {"store-user", "store-secret"},
		"nothing.example": {"", ""},
	} {
		u, s, err := creds(host)
		if err != nil || u != want[0] || s != want[1] {
			t.Errorf("%s: %q %q %v", host, u, s, err)
		}
	}
}

func TestDeadMirrorSkipped(t *testing.T) {
	origin := newFakeRegistry(t)
	dead := httptest.NewServer(http.NotFoundHandler())
	deadHost := dead.Listener.Addr().String()
	dead.Close()
	c := New(Options{HostsDirs: []string{writeHostsToml(t, origin.host(), deadHost)}})
	desc := origin.addBlob(blobContent(1000))
	p := make([]byte, 100)
	if _, err := c.Blob(origin.ref("team/app"), desc).FetchAt(context.Background(), p, 10); err != nil {
		t.Fatal(err)
	}
	if origin.hitCount("blobs") != 1 {
		t.Fatalf("origin saw %d blob requests", origin.hitCount("blobs"))
	}
}

// TestMirrorIgnoringRangesFarInFallsBack: a pull-through mirror that has
// not stored a blob answers a range request with the whole blob (200).
// Near the start the daemon skips to its range; beyond maxRangeSkip it asks
// the next endpoint, the origin, instead of failing the read.
func TestMirrorIgnoringRangesFarInFallsBack(t *testing.T) {
	origin := newFakeRegistry(t)
	data := blobContent(maxRangeSkip + 1<<20)
	desc := origin.addBlob(data)
	var mirrorHits atomic.Int32
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mirrorHits.Add(1)
		if !strings.Contains(req.URL.Path, "/blobs/") {
			http.NotFound(w, req)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.WriteHeader(http.StatusOK) // the Range header is ignored
		_, _ = w.Write(data)
	}))
	t.Cleanup(mirror.Close)
	c := New(Options{HostsDirs: []string{writeHostsToml(t, origin.host(), mirror.Listener.Addr().String())}})
	blob := c.Blob(origin.ref("team/app"), desc)
	ctx := context.Background()

	near := make([]byte, 100)
	if _, err := blob.FetchAt(ctx, near, 1000); err != nil {
		t.Fatalf("read near the start through the mirror: %v", err)
	}
	if !bytes.Equal(near, data[1000:1100]) || origin.hitCount("blobs") != 0 {
		t.Fatalf("near read: wrong bytes or origin asked (%d blob requests)", origin.hitCount("blobs"))
	}
	far := make([]byte, 100)
	off := int64(maxRangeSkip + 4096)
	if _, err := blob.FetchAt(ctx, far, off); err != nil {
		t.Fatalf("read %d bytes in: %v", off, err)
	}
	if !bytes.Equal(far, data[off:off+100]) {
		t.Fatal("far read: wrong bytes")
	}
	if origin.hitCount("blobs") != 1 || mirrorHits.Load() != 2 {
		t.Fatalf("far read: origin saw %d blob requests, mirror %d requests; want 1 and 2", origin.hitCount("blobs"), mirrorHits.Load())
	}
}
