package fusehost

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/fastsoci/soci-snapshotter/internal/errclass"
	"github.com/fastsoci/soci-snapshotter/internal/mountctx"
)

func connect(t *testing.T, root, id string, opts ...func(*ClientOptions)) *Client {
	t.Helper()
	o := ClientOptions{Root: root, ID: id}
	for _, f := range opts {
		f(&o)
	}
	c, err := Connect(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestErrorClassesRoundTrip(t *testing.T) {
	root := shortRoot(t)
	startTestHost(t, root, "own", newFakeFS())
	c := connect(t, root, "own")
	ctx := context.Background()
	for _, tc := range []struct {
		class string
		is    func(error) bool
	}{
		{"no_index", func(err error) bool { return errors.Is(err, errclass.ErrNoIndex) && errdefs.IsNotFound(err) }},
		{"not_found", func(err error) bool { return errdefs.IsNotFound(err) && !errors.Is(err, errclass.ErrNoIndex) }},
		{"failed_precondition", errdefs.IsFailedPrecondition},
		{"unavailable", errdefs.IsUnavailable},
	} {
		err := c.Mount(ctx, "/m/"+tc.class, map[string]string{"fail": tc.class})
		if err == nil || !tc.is(err) {
			t.Errorf("%s: got %v, which is not of its class", tc.class, err)
		}
		if err != nil && !strings.Contains(err.Error(), failWith(tc.class).Error()) {
			t.Errorf("%s: message %q lost the host's", tc.class, err)
		}
	}
	err := c.Mount(ctx, "/m/plain", map[string]string{"fail": "plain"})
	if err == nil || errdefs.IsNotFound(err) || errdefs.IsFailedPrecondition(err) || errdefs.IsUnavailable(err) {
		t.Errorf("plain failure: got %v, want an error of no class", err)
	}
	// A malformed request is refused as invalid.
	if err := c.Mount(ctx, "relative/path", nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("relative mountpoint: got %v, want invalid argument", err)
	}
}

func TestMountCarriesLocalOnlyAndCredentials(t *testing.T) {
	root := shortRoot(t)
	h := startTestHost(t, root, "own", newFakeFS())
	creds := func(host string) (string, string, error) {
		if host == "docker.io" {
			return "alice", "s3cret", nil
		}
		return "", "", nil
	}
	c := connect(t, root, "own", func(o *ClientOptions) { o.Credentials = creds })
	labels := map[string]string{imageRefLabel: "docker.io/library/busybox:latest"}
	if err := c.Mount(mountctx.WithLocalOnly(context.Background()), "/m/a", labels); err != nil {
		t.Fatal(err)
	}
	if err := c.Mount(context.Background(), "/m/b", map[string]string{imageRefLabel: "other.example/x:1"}); err != nil {
		t.Fatal(err)
	}
	if got := h.fs.localOnly; len(got) != 2 || !got[0] || got[1] {
		t.Errorf("local-only seen by the FS: %v, want [true false]", got)
	}
	// The registry client asks by the host it talks to.
	if u, s, _ := h.creds.Lookup("registry-1.docker.io"); u != "alice" || s != "s3cret" {
		t.Errorf("credentials kept by the host: %q (secret matches %v)", u, s == "s3cret")
	}
	if u, s, _ := h.creds.Lookup("other.example"); u != "" || s != "" {
		t.Errorf("credentials for a host none were sent for: %q", u)
	}
}

func TestRetiredHostExitsWhenEmpty(t *testing.T) {
	root := shortRoot(t)
	h := startTestHost(t, root, "old", newFakeFS("/m/a"))
	conn := newConn("old", SocketPath(root, "old"))
	ctx := context.Background()
	if err := conn.call(ctx, "POST", pathRetire, defaultCallTimeout, nil, nil); err != nil {
		t.Fatal(err)
	}
	if r := h.exited(); r != "" {
		t.Fatalf("retired host with a layer exited: %q", r)
	}
	health, err := conn.health(ctx, defaultCallTimeout)
	if err != nil || !health.Retired || health.Mounts != 1 || health.ID != "old" {
		t.Errorf("health of the retired host: %+v, %v", health, err)
	}
	if err := conn.call(ctx, "POST", pathUnmount, defaultCallTimeout, MountpointRequest{"/m/a"}, nil); err != nil {
		t.Fatal(err)
	}
	if r := h.exited(); r == "" {
		t.Fatal("retired host did not exit once its last layer was unmounted")
	}
	// Once exiting, no mount is accepted.
	err = conn.call(ctx, "POST", pathMount, defaultCallTimeout, MountRequest{Mountpoint: "/m/b"}, nil)
	if !errdefs.IsUnavailable(err) {
		t.Errorf("mount on an exiting host: %v, want unavailable", err)
	}

	// A host retired with no layer exits at once.
	root2 := shortRoot(t)
	h2 := startTestHost(t, root2, "empty", newFakeFS())
	if err := newConn("empty", SocketPath(root2, "empty")).call(ctx, "POST", pathRetire, defaultCallTimeout, nil, nil); err != nil {
		t.Fatal(err)
	}
	if r := h2.exited(); r == "" {
		t.Error("empty host did not exit when retired")
	}
}

func TestShutdownUnmountsAll(t *testing.T) {
	root := shortRoot(t)
	h := startTestHost(t, root, "own", newFakeFS("/m/a", "/m/b"))
	c := connect(t, root, "own")
	if err := c.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r := h.exited(); r != "shutdown" {
		t.Errorf("exit reason %q, want shutdown", r)
	}
	if mps := h.fs.Mountpoints(); len(mps) != 0 {
		t.Errorf("still mounted after shutdown: %v", mps)
	}
}

func TestClientRoutesAcrossHosts(t *testing.T) {
	root := shortRoot(t)
	old := startTestHost(t, root, "old", newFakeFS("/m/old1", "/m/old2"))
	own := startTestHost(t, root, "new", newFakeFS())
	c := connect(t, root, "new")
	ctx := context.Background()
	if !old.server.Health().Retired {
		t.Fatal("Connect did not retire the older host")
	}
	if own.server.Health().Retired {
		t.Fatal("Connect retired its own host")
	}
	// Checks of the old host's layers go to it; new mounts to the own host.
	if err := c.Check(ctx, "/m/old1", nil); err != nil {
		t.Errorf("check of a layer the old host serves: %v", err)
	}
	if err := c.Mount(ctx, "/m/new", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Check(ctx, "/m/new", nil); err != nil {
		t.Errorf("check of a layer the own host serves: %v", err)
	}
	if calls := old.fs.Calls(); !slicesEqual(calls, []string{"check /m/old1"}) {
		t.Errorf("old host got %v", calls)
	}
	if calls := own.fs.Calls(); !slicesEqual(calls, []string{"mount /m/new", "check /m/new"}) {
		t.Errorf("own host got %v", calls)
	}
	// Unmount and release go where the layer is; the old host exits
	// once it serves nothing.
	if err := c.Unmount(ctx, "/m/old1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Release(ctx, "/m/old2"); err != nil {
		t.Fatal(err)
	}
	if r := old.exited(); r == "" {
		t.Error("old host did not exit after its last layer went")
	}
	old.stop()
	// With the old host gone, calls about its mountpoints reach the own
	// host (a check fails there; the snapshotter then mounts again).
	if err := c.Check(ctx, "/m/old1", nil); err == nil {
		t.Error("check of a layer nobody serves passed")
	}
	if calls := own.fs.Calls(); calls[len(calls)-1] != "check /m/old1" {
		t.Errorf("own host got %v", calls)
	}
}

func TestMountOfRetiredHostsLayerUnmountsItThere(t *testing.T) {
	root := shortRoot(t)
	old := startTestHost(t, root, "old", newFakeFS("/m/a"))
	own := startTestHost(t, root, "new", newFakeFS())
	c := connect(t, root, "new")
	if err := c.Mount(context.Background(), "/m/a", nil); err != nil {
		t.Fatal(err)
	}
	if calls := old.fs.Calls(); !slicesEqual(calls, []string{"unmount /m/a"}) {
		t.Errorf("old host got %v, want the layer unmounted first", calls)
	}
	if calls := own.fs.Calls(); !slicesEqual(calls, []string{"mount /m/a"}) {
		t.Errorf("own host got %v", calls)
	}
}

func slicesEqual(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}

func TestErrorWithoutBody(t *testing.T) {
	err := decodeError(502, []byte("<html>bad gateway</html>"))
	if err == nil || errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "502") {
		t.Errorf("got %v", err)
	}
	var re *remoteError
	if errors.As(err, &re) {
		t.Errorf("a body that is not ours decoded as a host error: %v", err)
	}
}

// TestMountCarriesNamespace: the containerd namespace of the snapshot call
// reaches the host's FS (it reads containerd's content store in it); a
// malformed one is refused as invalid.
func TestMountCarriesNamespace(t *testing.T) {
	root := shortRoot(t)
	h := startTestHost(t, root, "own", newFakeFS())
	c := connect(t, root, "own")
	if err := c.Mount(namespaces.WithNamespace(context.Background(), "k8s.io"), "/m/a", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Mount(context.Background(), "/m/b", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Mount(namespaces.WithNamespace(context.Background(), "../x"), "/m/c", nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("malformed namespace: got %v, want invalid argument", err)
	}
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if got := h.fs.nss; len(got) != 2 || got[0] != "k8s.io" || got[1] != "" {
		t.Errorf("namespaces seen by the FS: %q, want [k8s.io \"\"]", got)
	}
}

// TestDebugOnlyWhenGiven: the host serves pprof on its socket only when
// ServerOptions.Debug is set (debug_address configured).
func TestDebugOnlyWhenGiven(t *testing.T) {
	debug := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("profile")) })
	for _, tc := range []struct {
		h    http.Handler
		want int
	}{{nil, http.StatusNotFound}, {debug, http.StatusOK}} {
		rec := httptest.NewRecorder()
		NewServer(ServerOptions{Debug: tc.h}).Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/pprof/heap", nil))
		if rec.Code != tc.want {
			t.Errorf("debug handler %v: status %d, want %d", tc.h != nil, rec.Code, tc.want)
		}
	}
}
