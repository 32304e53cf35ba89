package fusehost

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	"github.com/fastsoci/soci-snapshotter/internal/errclass"
	"github.com/fastsoci/soci-snapshotter/internal/mountctx"
)

// fakeFS is an FS that mounts nothing: it records calls. A Mount whose
// labels have "fail" fails with that class (see failWith).
type fakeFS struct {
	mu        sync.Mutex
	mounted   map[string]bool
	calls     []string
	localOnly []bool
	nss       []string // the containerd namespace of each Mount's ctx
}

func newFakeFS(mounted ...string) *fakeFS {
	f := &fakeFS{mounted: map[string]bool{}}
	for _, mp := range mounted {
		f.mounted[mp] = true
	}
	return f
}

func (f *fakeFS) record(call string) {
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()
}

func (f *fakeFS) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func failWith(class string) error {
	switch class {
	case "no_index":
		return fmt.Errorf("no SOCI index for image manifest sha256:m: %w", errclass.ErrNoIndex)
	case "not_found":
		return fmt.Errorf("layer has no zTOC: %w", errdefs.ErrNotFound)
	case "failed_precondition":
		return fmt.Errorf("zTOC found bad: %w", errdefs.ErrFailedPrecondition)
	case "unavailable":
		return fmt.Errorf("registry down: %w", errdefs.ErrUnavailable)
	}
	return errors.New("plain failure")
}

func (f *fakeFS) Mount(ctx context.Context, mp string, labels map[string]string) error {
	f.record("mount " + mp)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.localOnly = append(f.localOnly, mountctx.LocalOnly(ctx))
	ns, _ := namespaces.Namespace(ctx)
	f.nss = append(f.nss, ns)
	if c, ok := labels["fail"]; ok {
		return failWith(c)
	}
	f.mounted[mp] = true
	return nil
}

func (f *fakeFS) Check(_ context.Context, mp string, _ map[string]string) error {
	f.record("check " + mp)
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.mounted[mp] {
		return fmt.Errorf("check %s: not mounted", mp)
	}
	return nil
}

func (f *fakeFS) Unmount(_ context.Context, mp string) error {
	f.record("unmount " + mp)
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.mounted, mp)
	return nil
}

func (f *fakeFS) Release(_ context.Context, mp string) error {
	f.record("release " + mp)
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.mounted, mp)
	return nil
}

func (f *fakeFS) Mountpoints() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for mp := range f.mounted {
		out = append(out, mp)
	}
	slices.Sort(out)
	return out
}

func (f *fakeFS) Close() error {
	f.record("close")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mounted = map[string]bool{}
	return nil
}

// testHost is a Server on the socket of host id of root, in this process.
type testHost struct {
	fs     *fakeFS
	server *Server
	creds  *Credentials
	exits  chan string
	l      net.Listener
	srv    *http.Server
}

func startTestHost(t *testing.T, root, id string, fsys *fakeFS) *testHost {
	t.Helper()
	if err := os.MkdirAll(SocketDir(root), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", SocketPath(root, id))
	if err != nil {
		t.Fatal(err)
	}
	h := &testHost{fs: fsys, creds: NewCredentials(), exits: make(chan string, 4), l: l}
	h.server = NewServer(ServerOptions{
		ID: id, Version: "test", FS: fsys, Creds: h.creds,
		Exit: func(reason string) { h.exits <- reason },
	})
	h.srv = Serve(context.Background(), l, h.server.Handler())
	t.Cleanup(h.stop)
	return h
}

// stop closes the host's socket as a dying host would (the file stays).
func (h *testHost) stop() {
	if ul, ok := h.l.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	h.srv.Close()
}

// exited returns the exit reason the host gave, "" if none yet.
func (h *testHost) exited() string {
	select {
	case r := <-h.exits:
		return r
	default:
		return ""
	}
}

// shortRoot is a root directory whose socket paths fit sun_path.
func shortRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "root")
}
