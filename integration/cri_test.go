package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// TestCRICredentials: with [cri_keychain] enabled the daemon's socket
// serves the CRI ImageService, as kubelet's --image-service-endpoint. A
// PullImage with credentials for an htpasswd registry, sent to the daemon,
// is forwarded to containerd's CRI plugin (which pulls into "soci"), and
// the daemon — which has no docker config — fetches the SOCI index, zTOCs
// and spans with the credentials it captured. The password never shows up
// in the daemon's log.
func TestCRICredentials(t *testing.T) {
	const user, password = "cri-user", "pw-Cr1xQ93mZ"
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t, 5*time.Minute)
	dir := t.TempDir()
	e := &harness.Env{Dir: dir, Tools: tools, Namespace: "k8s.io"} // CRI's namespace
	t.Cleanup(func() {
		if t.Failed() && e.Registry != nil && e.Daemon != nil && e.Containerd != nil {
			dumpLogs(t, e)
		}
		if err := e.Close(); err != nil {
			t.Errorf("stop environment: %v", err)
		}
	})
	for _, sub := range []string{"registry", "authregistry", "daemon", "containerd", "nerdctl"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if e.Registry, err = harness.StartRegistry(ctx, filepath.Join(tools.Bin, "registry"), filepath.Join(dir, "registry")); err != nil {
		t.Fatal(err)
	}
	img := newLayeredImage()
	// Pushed to the open registry; an authenticated registry on the same
	// storage serves it.
	pushV2(t, e, "lazy/cri:latest", buildImage(t, img.spec), sociimage.Options{SpanSize: 1 << 20})
	htpasswd := filepath.Join(dir, "authregistry", "htpasswd")
	if err := harness.WriteHtpasswd(htpasswd, user, password); err != nil {
		t.Fatal(err)
	}
	reg, err := harness.StartRegistryWith(ctx, filepath.Join(tools.Bin, "registry"), filepath.Join(dir, "authregistry"),
		harness.RegistryOptions{Storage: e.Registry.Storage, Htpasswd: htpasswd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Stop() })
	ref := reg.Host + "/lazy/cri:latest"

	containerdSock := filepath.Join(dir, "containerd", "containerd.sock")
	daemonConfig := defaultDaemonConfig + fmt.Sprintf(`
[cri_keychain]
  enable_keychain = true
  image_service_path = %q
`, containerdSock)
	if e.Daemon, err = harness.NewDaemon(filepath.Join(tools.Ours, "soci-snapshotter-grpc"), filepath.Join(dir, "daemon"), daemonConfig); err != nil {
		t.Fatal(err)
	}
	e.Daemon.Env = []string{"DOCKER_CONFIG=" + t.TempDir()} // empty: no credentials there
	if err := e.Daemon.Start(ctx); err != nil {
		t.Fatal(err)
	}
	e.Containerd, err = harness.StartContainerdWith(ctx, tools.Bin, filepath.Join(dir, "containerd"), e.Daemon.Address,
		harness.ContainerdOptions{CRI: true})
	if err != nil {
		t.Fatal(err)
	}
	if e.Containerd.Address != containerdSock {
		t.Fatalf("containerd listens on %s, not %s", e.Containerd.Address, containerdSock)
	}

	// kubelet's side: the CRI image service at the daemon's socket.
	conn, err := grpc.NewClient("unix://"+e.Daemon.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	images := runtime.NewImageServiceClient(conn)
	// containerd's CRI plugin may still be starting.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := images.ImageFsInfo(ctx, &runtime.ImageFsInfoRequest{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ImageFsInfo through the daemon: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Without credentials containerd's pull is refused.
	if _, err := images.PullImage(ctx, &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: ref}}); err == nil {
		t.Fatal("CRI pull without credentials succeeded")
	}
	res, err := images.PullImage(ctx, &runtime.PullImageRequest{
		Image: &runtime.ImageSpec{Image: ref},
		Auth:  &runtime.AuthConfig{Username: user, Password: password},
	})
	if err != nil {
		t.Fatalf("CRI pull with credentials: %v", err)
	}
	st, err := images.ImageStatus(ctx, &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: ref}})
	if err != nil || st.GetImage().GetId() != res.GetImageRef() {
		t.Fatalf("ImageStatus of %s: %v, %v (pulled %s)", ref, st, err, res.GetImageRef())
	}
	if n := fuseLayers(t, e); n != 3 {
		t.Errorf("want 3 lazily loaded layers mounted after the CRI pull, got %d", n)
	}
	// Reading the files fetches their spans with the captured credentials.
	checkSums(t, runSums(t, ctx, e, ref, img.paths), img.want)

	checkAuthenticatedRun(t, e, reg, []string{password})
}
