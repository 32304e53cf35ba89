package chunkfetch

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/fastsoci/soci-snapshotter/fs/remote"
)

// blobServer serves one blob at /v2/app/blobs/<digest>, honouring Range
// requests (http.ServeContent), and counts them.
type blobServer struct {
	srv    *httptest.Server
	data   []byte
	ranges atomic.Int64
}

func newBlobServer(t *testing.T, data []byte) *blobServer {
	s := &blobServer{data: data}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v2/app/blobs/") {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Range") != "" {
			s.ranges.Add(1)
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(s.data))
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *blobServer) ref() string { return s.srv.Listener.Addr().String() + "/app:latest" }

func content(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13 + i/509)
	}
	return b
}

// download fetches desc from srv in chunks of chunkSize with 4 workers while
// one reader reads it, and returns what the reader got and its final error.
func download(t *testing.T, srv *blobServer, desc ocispec.Descriptor, chunkSize int64) ([]byte, error) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "blob"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := New(f, desc, chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	blob := remote.New(remote.Options{}).Blob(srv.ref(), desc)
	var g errgroup.Group
	g.SetLimit(4)
	var fetchErr error
	var mu sync.Mutex
	go func() {
		for i := range d.Chunks() {
			g.Go(func() error {
				if err := d.FetchChunk(ctx, blob, i, make([]byte, 16<<10)); err != nil {
					mu.Lock()
					fetchErr = err
					mu.Unlock()
				}
				return nil
			})
		}
	}()
	got, err := io.ReadAll(d.Reader(ctx))
	_ = g.Wait()
	mu.Lock()
	defer mu.Unlock()
	if err == nil && fetchErr != nil {
		t.Fatalf("fetch failed but the reader did not: %v", fetchErr)
	}
	return got, err
}

func TestDownloadInChunks(t *testing.T) {
	data := content(1<<20 + 123)
	srv := newBlobServer(t, data)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}
	got, err := download(t, srv, desc, 100<<10)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, not the blob's %d", len(got), len(data))
	}
	// 11 chunks of at most 100 KiB, each read in 16 KiB requests.
	if n := srv.ranges.Load(); n < 11*6 {
		t.Fatalf("%d range requests, want one per 16 KiB of each chunk", n)
	}
}

func TestDownloadWholeBlobOneChunk(t *testing.T) {
	data := content(50000)
	srv := newBlobServer(t, data)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}
	got, err := download(t, srv, desc, -1)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v; want the blob", len(got), err)
	}
}

func TestDownloadCorruptByteFailsDigest(t *testing.T) {
	data := content(300 << 10)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}
	bad := bytes.Clone(data)
	bad[200<<10] ^= 0x40
	srv := newBlobServer(t, bad)
	_, err := download(t, srv, desc, 64<<10)
	if !errors.Is(err, ErrDigest) {
		t.Fatalf("read of a corrupted blob: %v, want ErrDigest", err)
	}
	if !strings.Contains(err.Error(), desc.Digest.String()) {
		t.Fatalf("error %q does not name the blob", err)
	}
}

func TestDownloadShortBlobFails(t *testing.T) {
	data := content(100 << 10)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data)) + 10}
	srv := newBlobServer(t, data)
	_, err := download(t, srv, desc, 32<<10)
	if err == nil || errors.Is(err, ErrDigest) {
		t.Fatalf("read of a blob shorter than its descriptor: %v, want a fetch error", err)
	}
}

func TestReaderStopsOnContext(t *testing.T) {
	data := content(1000)
	f, err := os.Create(filepath.Join(t.TempDir(), "blob"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := New(f, ocispec.Descriptor{Digest: digest.FromBytes(data), Size: 1000}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.Reader(ctx).Read(make([]byte, 10)); !errors.Is(err, context.Canceled) {
		t.Fatalf("read with nothing written and ctx done: %v", err)
	}
}

func TestNewRefusesBadDescriptors(t *testing.T) {
	for _, desc := range []ocispec.Descriptor{
		{Digest: "sha256:nothex", Size: 10},
		{Digest: digest.FromString("x"), Size: 0},
		{Digest: digest.FromString("x"), Size: -5},
	} {
		if _, err := New(nil, desc, 10); err == nil {
			t.Fatalf("New(%v) accepted", desc)
		}
	}
}

// A manifest may name a huge layer and the configuration a small chunk:
// the chunk table stays bounded, and the chunks still cover the blob.
func TestNewBoundsChunks(t *testing.T) {
	desc := ocispec.Descriptor{Digest: digest.FromString("x"), Size: 1 << 40}
	d, err := New(nil, desc, 1024)
	if err != nil {
		t.Fatal(err)
	}
	chunks := d.Chunks()
	if len(chunks) > MaxChunks {
		t.Fatalf("%d chunks, more than %d", len(chunks), MaxChunks)
	}
	var end int64
	for _, c := range chunks {
		if c.Off != end || c.Len <= 0 {
			t.Fatalf("chunk %+v does not follow the previous one (end %d)", c, end)
		}
		end = c.Off + c.Len
	}
	if end != desc.Size {
		t.Fatalf("chunks end at %d, blob size %d", end, desc.Size)
	}
}
