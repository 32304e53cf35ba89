package ctdcontent

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/containerd/v2/plugins/services/content/contentserver"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// serve runs containerd's content service over a local content store on a
// unix socket, as containerd serves it, and returns the socket and store.
func serve(t *testing.T) (string, content.Store) {
	t.Helper()
	sock, cs, _, _ := serveWithLeases(t)
	return sock, cs
}

// fakeLeases is containerd's leases service as far as WriteBlob uses it.
type fakeLeases struct {
	leasesapi.UnimplementedLeasesServer
	mu      sync.Mutex
	created []*leasesapi.CreateRequest
}

func (f *fakeLeases) Create(_ context.Context, req *leasesapi.CreateRequest) (*leasesapi.CreateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created = append(f.created, req)
	return &leasesapi.CreateResponse{Lease: &leasesapi.Lease{ID: req.ID, Labels: req.Labels}}, nil
}

// serveWithLeases is serve with the leases service too; it also returns
// the leases the content writes named (containerd's lease header).
func serveWithLeases(t *testing.T) (string, content.Store, *fakeLeases, func() []string) {
	t.Helper()
	dir := t.TempDir()
	cs, err := local.NewStore(filepath.Join(dir, "content"))
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "c.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var writes []string
	srv := grpc.NewServer(grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if strings.HasSuffix(info.FullMethod, "/Write") {
			md, _ := metadata.FromIncomingContext(ss.Context())
			mu.Lock()
			writes = append(writes, strings.Join(md.Get("containerd-lease"), ","))
			mu.Unlock()
		}
		return h(srv, ss)
	}))
	contentapi.RegisterContentServer(srv, contentserver.New(cs))
	fl := &fakeLeases{}
	leasesapi.RegisterLeasesServer(srv, fl)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return sock, cs, fl, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), writes...) }
}

func put(t *testing.T, cs content.Store, data []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	desc := ocispec.Descriptor{Digest: d, Size: int64(len(data))}
	if err := content.WriteBlob(context.Background(), cs, d.String(), bytes.NewReader(data), desc); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestReadBlob(t *testing.T) {
	sock, cs := serve(t)
	blob := bytes.Repeat([]byte("zTOC "), 300<<10) // 1.5 MiB: several messages
	d := put(t, cs, blob)
	s, err := New("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := namespaces.WithNamespace(context.Background(), "soci-test")

	got, err := s.ReadBlob(ctx, d, int64(len(blob)))
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("ReadBlob: %d bytes, %v; want the blob", len(got), err)
	}
	if _, err := s.ReadBlob(ctx, d, int64(len(blob))-1); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("a blob over max: got %v, want a refusal", err)
	}
	if _, err := s.ReadBlob(ctx, digest.FromString("absent"), 1<<20); !errdefs.IsNotFound(err) {
		t.Errorf("an absent blob: got %v, want NotFound", err)
	}
	if _, err := s.ReadBlob(context.Background(), d, 1<<30); !errdefs.IsNotFound(err) {
		t.Errorf("no namespace: got %v, want NotFound", err)
	}
	if _, err := s.ReadBlob(ctx, "sha256:../../x", 1<<20); err == nil {
		t.Error("an invalid digest was looked up")
	}
}

// TestNoContainerd: the store is made without containerd; reads fail (not
// as NotFound, so the index store warns) and the caller goes on.
func TestNoContainerd(t *testing.T) {
	s, err := New(filepath.Join(t.TempDir(), "absent.sock"))
	if err != nil {
		t.Fatalf("New without containerd: %v", err)
	}
	defer s.Close()
	ctx := namespaces.WithNamespace(context.Background(), "default")
	_, err = s.ReadBlob(ctx, digest.FromString("x"), 1<<20)
	if err == nil || errdefs.IsNotFound(err) {
		t.Errorf("got %v, want a connection error", err)
	}
}

func TestWriteBlob(t *testing.T) {
	sock, cs, leases, writes := serveWithLeases(t)
	s, err := New("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := namespaces.WithNamespace(context.Background(), "soci-test")
	blob := bytes.Repeat([]byte("layer "), 200<<10)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	for range 2 { // the second write finds it there
		if err := s.WriteBlob(ctx, desc, bytes.NewReader(blob)); err != nil {
			t.Fatalf("WriteBlob: %v", err)
		}
	}
	got, err := content.ReadBlob(ctx, cs, desc)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("stored blob: %d bytes, %v", len(got), err)
	}
	// Each write is under a lease of its own that expires and names the
	// layer, so that containerd's garbage collector keeps the blob.
	leases.mu.Lock()
	created := slices.Clone(leases.created)
	leases.mu.Unlock()
	w := writes()
	if len(created) != 2 || len(w) != 2 {
		t.Fatalf("leases created %d, writes under leases %q", len(created), w)
	}
	for i, c := range created {
		if w[i] != c.ID {
			t.Errorf("write %d under lease %q, want %q", i, w[i], c.ID)
		}
		if c.Labels["soci.parallel-pull.layer"] != desc.Digest.String() || c.Labels["containerd.io/gc.expire"] == "" {
			t.Errorf("lease %s labels %v", c.ID, c.Labels)
		}
	}
	other := ocispec.Descriptor{Digest: digest.FromString("other"), Size: int64(len(blob))}
	if err := s.WriteBlob(ctx, other, bytes.NewReader(blob)); err == nil {
		t.Fatal("a blob that is not its descriptor's was stored")
	}
	if err := s.WriteBlob(context.Background(), desc, bytes.NewReader(blob)); err == nil {
		t.Fatal("stored without a namespace")
	}
}
