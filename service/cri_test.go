package service

import (
	"context"
	"encoding/base64"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/fastsoci/soci-snapshotter/fs/remote"
)

// fakeImageService records what reached the backend.
type fakeImageService struct {
	runtime.UnimplementedImageServiceServer
	mu    sync.Mutex
	calls []string
	pulls []*runtime.PullImageRequest
}

func (f *fakeImageService) called(name string) {
	f.mu.Lock()
	f.calls = append(f.calls, name)
	f.mu.Unlock()
}

func (f *fakeImageService) PullImage(_ context.Context, r *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	f.called("PullImage")
	f.mu.Lock()
	f.pulls = append(f.pulls, r)
	f.mu.Unlock()
	return &runtime.PullImageResponse{ImageRef: "sha256:pulled-" + r.GetImage().GetImage()}, nil
}

func (f *fakeImageService) ListImages(context.Context, *runtime.ListImagesRequest) (*runtime.ListImagesResponse, error) {
	f.called("ListImages")
	return &runtime.ListImagesResponse{Images: []*runtime.Image{{Id: "sha256:listed"}}}, nil
}

func (f *fakeImageService) ImageStatus(_ context.Context, r *runtime.ImageStatusRequest) (*runtime.ImageStatusResponse, error) {
	f.called("ImageStatus")
	return &runtime.ImageStatusResponse{Image: &runtime.Image{Id: "sha256:status-" + r.GetImage().GetImage()}}, nil
}

func (f *fakeImageService) RemoveImage(context.Context, *runtime.RemoveImageRequest) (*runtime.RemoveImageResponse, error) {
	f.called("RemoveImage")
	return &runtime.RemoveImageResponse{}, nil
}

func (f *fakeImageService) ImageFsInfo(context.Context, *runtime.ImageFsInfoRequest) (*runtime.ImageFsInfoResponse, error) {
	f.called("ImageFsInfo")
	return &runtime.ImageFsInfoResponse{ImageFilesystems: []*runtime.FilesystemUsage{{Timestamp: 42}}}, nil
}

// serveUnix serves s on a unix socket at path until the test ends.
func serveUnix(t *testing.T, path string, s *grpc.Server) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
}

// startCRIProxy starts a fake containerd image service and our proxy in
// front of it, each on its own unix socket, and returns a client of the
// proxy.
func startCRIProxy(t *testing.T) (*fakeImageService, *criProxy, runtime.ImageServiceClient) {
	t.Helper()
	dir := t.TempDir()
	fake := &fakeImageService{}
	backend := grpc.NewServer()
	runtime.RegisterImageServiceServer(backend, fake)
	serveUnix(t, filepath.Join(dir, "containerd.sock"), backend)

	proxy, err := newCRIProxy(filepath.Join(dir, "containerd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.close() })
	front := grpc.NewServer()
	runtime.RegisterImageServiceServer(front, proxy)
	serveUnix(t, filepath.Join(dir, "soci.sock"), front)

	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "soci.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return fake, proxy, runtime.NewImageServiceClient(conn)
}

func pull(t *testing.T, c runtime.ImageServiceClient, image string, auth *runtime.AuthConfig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.PullImage(ctx, &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: image}, Auth: auth})
	if err != nil {
		t.Fatalf("PullImage %s: %v", image, err)
	}
	if res.GetImageRef() != "sha256:pulled-"+image {
		t.Fatalf("PullImage %s: answer %q is not the backend's", image, res.GetImageRef())
	}
}

func wantCreds(t *testing.T, creds func(string) (string, string, error), host, user, secret string) {
	t.Helper()
	u, s, err := creds(host)
	if err != nil {
		t.Fatalf("credentials for %s: %v", host, err)
	}
	if u != user || s != secret {
		t.Errorf("credentials for %s: got user %q (secret matches: %v), want user %q", host, u, s == secret, user)
	}
}

func TestCRIProxyPullRecordsCredentials(t *testing.T) {
	fake, proxy, c := startCRIProxy(t)
	const host = "registry.example:5000"
	auth := &runtime.AuthConfig{Username: "alice", Password: "s3cret"}
	pull(t, c, host+"/app:v1", auth)

	fake.mu.Lock()
	if len(fake.pulls) != 1 || fake.pulls[0].GetAuth().GetPassword() != "s3cret" {
		t.Errorf("the pull with its AuthConfig was not forwarded: %v", fake.pulls)
	}
	fake.mu.Unlock()
	wantCreds(t, proxy.credentials, host, "alice", "s3cret")
	wantCreds(t, proxy.credentials, "other.example", "", "")

	// As the daemon wires it: CRI credentials first, then docker config.
	docker := func(h string) (string, string, error) { return "docker-user", "docker-pw", nil }
	chained := remote.ChainCredentials(proxy.credentials, docker)
	wantCreds(t, chained, host, "alice", "s3cret")
	wantCreds(t, chained, "other.example", "docker-user", "docker-pw")

	// A later pull from the same host with other credentials wins.
	pull(t, c, host+"/other:v2", &runtime.AuthConfig{Auth: base64.StdEncoding.EncodeToString([]byte("bob:pw2"))})
	wantCreds(t, proxy.credentials, host, "bob", "pw2")
	// Removing that image by reference falls back to the earlier pull's.
	ctx := context.Background()
	if _, err := c.RemoveImage(ctx, &runtime.RemoveImageRequest{Image: &runtime.ImageSpec{Image: host + "/other:v2"}}); err != nil {
		t.Fatal(err)
	}
	wantCreds(t, proxy.credentials, host, "alice", "s3cret")
}

func TestCRIProxyAuthForms(t *testing.T) {
	_, proxy, c := startCRIProxy(t)
	// Docker Hub, however spelled, with an identity token.
	pull(t, c, "busybox", &runtime.AuthConfig{IdentityToken: "idtok", ServerAddress: "https://index.docker.io/v1/"})
	wantCreds(t, proxy.credentials, "registry-1.docker.io", "", "idtok")
	wantCreds(t, proxy.credentials, "docker.io", "", "idtok")
	// Credentials for another server are not used for this image's host.
	pull(t, c, "a.example/x:1", &runtime.AuthConfig{Username: "u", Password: "p", ServerAddress: "b.example"})
	wantCreds(t, proxy.credentials, "a.example", "", "")
	// An anonymous pull records nothing.
	pull(t, c, "c.example/x:1", nil)
	wantCreds(t, proxy.credentials, "c.example", "", "")
	// Bad auth fails the pull without forwarding it, and without the secret.
	_, err := c.PullImage(context.Background(), &runtime.PullImageRequest{
		Image: &runtime.ImageSpec{Image: "d.example/x:1"},
		Auth:  &runtime.AuthConfig{Auth: base64.StdEncoding.EncodeToString([]byte("nocolon-secret"))},
	})
	if err == nil {
		t.Fatal("pull with malformed auth succeeded")
	}
	if strings.Contains(err.Error(), "nocolon-secret") {
		t.Errorf("error names the secret: %v", err)
	}
}

func TestCRIProxyForwards(t *testing.T) {
	fake, _, c := startCRIProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := c.ListImages(ctx, &runtime.ListImagesRequest{})
	if err != nil || len(l.GetImages()) != 1 || l.GetImages()[0].GetId() != "sha256:listed" {
		t.Errorf("ListImages: %v, %v", l, err)
	}
	s, err := c.ImageStatus(ctx, &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: "x"}})
	if err != nil || s.GetImage().GetId() != "sha256:status-x" {
		t.Errorf("ImageStatus: %v, %v", s, err)
	}
	if _, err := c.RemoveImage(ctx, &runtime.RemoveImageRequest{Image: &runtime.ImageSpec{Image: "sha256:0123"}}); err != nil {
		t.Errorf("RemoveImage: %v", err)
	}
	fi, err := c.ImageFsInfo(ctx, &runtime.ImageFsInfoRequest{})
	if err != nil || len(fi.GetImageFilesystems()) != 1 || fi.GetImageFilesystems()[0].GetTimestamp() != 42 {
		t.Errorf("ImageFsInfo: %v, %v", fi, err)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	want := []string{"ListImages", "ImageStatus", "RemoveImage", "ImageFsInfo"}
	if len(fake.calls) != len(want) {
		t.Fatalf("backend calls %v, want %v", fake.calls, want)
	}
	for i := range want {
		if fake.calls[i] != want[i] {
			t.Errorf("backend calls %v, want %v", fake.calls, want)
		}
	}
}
