package pull

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/fs/chunkfetch"
	"github.com/fastsoci/soci-snapshotter/fs/layerapply"
)

// fakeRegistry serves one manifest and its layer blobs from memory.
type fakeRegistry struct {
	manifest  []byte
	mdgst     digest.Digest
	blobs     map[digest.Digest][]byte
	reads     sync.Map // digest -> *atomic.Int64 (range reads)
	manifests atomic.Int64
}

func (r *fakeRegistry) FetchManifest(_ context.Context, _ string, dgst digest.Digest) ([]byte, string, error) {
	r.manifests.Add(1)
	if dgst != r.mdgst {
		return nil, "", fmt.Errorf("manifest %s: %w", dgst, errdefs.ErrNotFound)
	}
	return r.manifest, ocispec.MediaTypeImageManifest, nil
}

func (r *fakeRegistry) Blob(_ string, desc ocispec.Descriptor) chunkfetch.RangeReader {
	n, _ := r.reads.LoadOrStore(desc.Digest, &atomic.Int64{})
	return &fakeBlob{data: r.blobs[desc.Digest], reads: n.(*atomic.Int64)}
}

func (r *fakeRegistry) readsOf(d digest.Digest) int64 {
	n, ok := r.reads.Load(d)
	if !ok {
		return 0
	}
	return n.(*atomic.Int64).Load()
}

type fakeBlob struct {
	data  []byte
	reads *atomic.Int64
}

func (b *fakeBlob) FetchAt(_ context.Context, p []byte, off int64) (int, error) {
	b.reads.Add(1)
	if off >= int64(len(b.data)) {
		return 0, io.EOF
	}
	n := copy(p, b.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

type testImage struct {
	reg      *fakeRegistry
	layers   []ocispec.Descriptor
	diffIDs  []digest.Digest
	chainIDs []digest.Digest
}

// newImage builds an image of n gzip layers, layer i holding file
// "f<i>" with content "layer <i>" and some padding.
func newImage(t *testing.T, n int) *testImage {
	t.Helper()
	img := &testImage{reg: &fakeRegistry{blobs: map[digest.Digest][]byte{}}}
	for i := range n {
		var raw bytes.Buffer
		tw := tar.NewWriter(&raw)
		body := bytes.Repeat([]byte(fmt.Sprintf("layer %d\n", i)), 5000)
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("f%d", i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write(body)
		tw.Close()
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(raw.Bytes())
		zw.Close()
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(gz.Bytes()), Size: int64(gz.Len())}
		img.reg.blobs[desc.Digest] = gz.Bytes()
		img.layers = append(img.layers, desc)
		img.diffIDs = append(img.diffIDs, digest.FromBytes(raw.Bytes()))
	}
	img.chainIDs = identity.ChainIDs(append([]digest.Digest(nil), img.diffIDs...))
	img.setManifest(t)
	return img
}

// setManifest makes the registry's manifest name img.layers.
func (img *testImage) setManifest(t *testing.T) {
	t.Helper()
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Layers: img.layers,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromString("{}"), Size: 2}}
	m.SchemaVersion = 2
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	img.reg.manifest, img.reg.mdgst = b, digest.FromBytes(b)
}

func (img *testImage) labels(i int) map[string]string {
	return map[string]string{
		snapshotters.TargetRefLabel:            "registry.test/app:latest",
		snapshotters.TargetManifestDigestLabel: img.reg.mdgst.String(),
		snapshotters.TargetLayerDigestLabel:    img.layers[i].Digest.String(),
	}
}

func (img *testImage) parent(i int) string {
	if i == 0 {
		return ""
	}
	return img.chainIDs[i-1].String()
}

// fakeTimers records scheduled calls; fire runs them.
type fakeTimers struct {
	mu sync.Mutex
	fs []func()
}

type fakeTimer struct{ stopped *atomic.Bool }

func (t fakeTimer) Stop() bool { return !t.stopped.Swap(true) }

func (ft *fakeTimers) after(_ time.Duration, f func()) Timer {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	stopped := &atomic.Bool{}
	ft.fs = append(ft.fs, func() {
		if !stopped.Load() {
			f()
		}
	})
	return fakeTimer{stopped}
}

func (ft *fakeTimers) fire() {
	ft.mu.Lock()
	fs := ft.fs
	ft.fs = nil
	ft.mu.Unlock()
	for _, f := range fs {
		f()
	}
}

func newPuller(t *testing.T, reg Registry, timers *fakeTimers) (*Puller, string) {
	t.Helper()
	return newPullerWith(t, reg, func(o *Options) {
		if timers != nil {
			o.AfterFunc = timers.after
		}
	})
}

// newPullerWith is newPuller with options changed by set.
func newPullerWith(t *testing.T, reg Registry, set func(*Options)) (*Puller, string) {
	t.Helper()
	root := t.TempDir()
	opts := Options{
		Registry: reg, StagingDir: filepath.Join(root, "pull"),
		ChunkSize: 10 << 10, RequestSize: 4 << 10,
		MaxDownloadsPerImage: 3, MaxUnpacksPerImage: 2, ReadAhead: true,
	}
	set(&opts)
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, root
}

// snapshotDir makes the empty directory a Pull replaces.
func snapshotDir(t *testing.T, root string, i int) string {
	dir := filepath.Join(root, "snapshots", fmt.Sprint(i), "fs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// stagingEntries lists what the puller's staging directories hold.
func stagingEntries(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	dirs, _ := filepath.Glob(filepath.Join(root, "pull", "s-*", "*"))
	for _, d := range dirs {
		out = append(out, filepath.Base(d))
	}
	return out
}

func TestPullLayersInOrder(t *testing.T) {
	img := newImage(t, 3)
	p, root := newPuller(t, img.reg, nil)
	ctx := context.Background()
	for i := range img.layers {
		dir := snapshotDir(t, root, i)
		if err := p.Pull(ctx, dir, img.parent(i), img.chainIDs[i].String(), nil, img.labels(i)); err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("f%d", i)))
		if err != nil || !bytes.HasPrefix(b, []byte(fmt.Sprintf("layer %d\n", i))) {
			t.Fatalf("layer %d content: %v", i, err)
		}
	}
	if n := img.reg.manifests.Load(); n != 1 {
		t.Fatalf("manifest fetched %d times, want once for the image", n)
	}
	// Chunks of 10 KiB in requests of at most 4 KiB.
	for i, l := range img.layers {
		if got, min := img.reg.readsOf(l.Digest), (l.Size+4<<10-1)/(4<<10); got < min {
			t.Fatalf("layer %d: %d range reads, want at least %d", i, got, min)
		}
	}
	if left := stagingEntries(t, root); len(left) != 0 {
		t.Fatalf("staging still holds %v", left)
	}
}

func TestPullStartsLaterLayers(t *testing.T) {
	img := newImage(t, 3)
	timers := &fakeTimers{}
	p, root := newPuller(t, img.reg, timers)
	if err := p.Pull(context.Background(), snapshotDir(t, root, 0), "", img.chainIDs[0].String(), nil, img.labels(0)); err != nil {
		t.Fatal(err)
	}
	// Layers 1 and 2 were started with layer 0: wait until they are
	// unpacked in staging (their expiry is scheduled when done).
	deadline := time.Now().Add(10 * time.Second)
	for {
		timers.mu.Lock()
		n := len(timers.fs)
		timers.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d later layers done ahead, want 2", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if img.reg.readsOf(img.layers[2].Digest) == 0 {
		t.Fatal("layer 2 was not downloaded ahead")
	}
	if left := stagingEntries(t, root); len(left) != 2 {
		t.Fatalf("staging holds %v, want the two layers done ahead", left)
	}
	// Nobody asks for them: they expire and are deleted.
	timers.fire()
	deadline = time.Now().Add(10 * time.Second)
	for len(stagingEntries(t, root)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("staging still holds %v after expiry", stagingEntries(t, root))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPullCorruptBlobFails(t *testing.T) {
	img := newImage(t, 3) // layer 2 is started ahead, then stopped
	bad := img.reg.blobs[img.layers[1].Digest]
	bad[len(bad)/2] ^= 0x01
	p, root := newPuller(t, img.reg, nil)
	ctx := context.Background()
	if err := p.Pull(ctx, snapshotDir(t, root, 0), "", img.chainIDs[0].String(), nil, img.labels(0)); err != nil {
		t.Fatal(err)
	}
	dir := snapshotDir(t, root, 1)
	err := p.Pull(ctx, dir, img.parent(1), img.chainIDs[1].String(), nil, img.labels(1))
	if err == nil {
		t.Fatal("pull of a corrupt layer succeeded")
	}
	if errdefs.IsNotFound(err) {
		t.Fatalf("corrupt layer classed NotFound (containerd would unpack it): %v", err)
	}
	if !bytes.Contains([]byte(err.Error()), []byte(img.layers[1].Digest.String())) {
		t.Fatalf("error %q does not name the layer", err)
	}
	if !errors.Is(err, chunkfetch.ErrDigest) && !bytes.Contains([]byte(err.Error()), []byte("gzip")) {
		t.Fatalf("error %v: want a digest (or gzip) failure", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("the snapshot directory got %d entries from a failed layer", len(entries))
	}
	waitStagingEmpty(t, root)
	p.mu.Lock()
	n := len(p.images)
	p.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d images still tracked after the pull failed", n)
	}
}

func waitStagingEmpty(t *testing.T, root string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(stagingEntries(t, root)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("staging still holds %v", stagingEntries(t, root))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPullDiffIDMismatch(t *testing.T) {
	img := newImage(t, 2)
	p, root := newPuller(t, img.reg, nil)
	dir := snapshotDir(t, root, 0)
	// containerd asks for a chain ID the layer does not give.
	err := p.Pull(context.Background(), dir, "", img.chainIDs[1].String(), nil, img.labels(0))
	if !errors.Is(err, layerapply.ErrDiffID) {
		t.Fatalf("Pull with the wrong chain ID: %v, want ErrDiffID", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatal("a layer with the wrong diffID was moved into the snapshot")
	}
	// On the right parent it is fine, and the wrong parent is refused.
	dir1 := snapshotDir(t, root, 1)
	if err := p.Pull(context.Background(), dir1, img.chainIDs[1].String(), img.chainIDs[1].String(), nil, img.labels(1)); !errors.Is(err, layerapply.ErrDiffID) {
		t.Fatalf("Pull on the wrong parent: %v, want ErrDiffID", err)
	}
}

func TestPullNotForUs(t *testing.T) {
	img := newImage(t, 1)
	p, root := newPuller(t, img.reg, nil)
	dir := snapshotDir(t, root, 0)
	labels := img.labels(0)
	delete(labels, snapshotters.TargetLayerDigestLabel)
	if err := p.Pull(context.Background(), dir, "", img.chainIDs[0].String(), nil, labels); !errdefs.IsNotFound(err) {
		t.Fatalf("Pull without a layer label: %v, want NotFound", err)
	}
	labels = img.labels(0)
	labels[snapshotters.TargetLayerDigestLabel] = digest.FromString("other").String()
	if err := p.Pull(context.Background(), dir, "", img.chainIDs[0].String(), nil, labels); !errdefs.IsNotFound(err) {
		t.Fatalf("Pull of a layer not in the manifest: %v, want NotFound", err)
	}
}

func TestParseManifestHostile(t *testing.T) {
	for name, doc := range map[string]string{
		"not json":     "{",
		"bad digest":   `{"layers":[{"digest":"sha256:zz","size":10}]}`,
		"zero size":    fmt.Sprintf(`{"layers":[{"digest":%q,"size":0}]}`, digest.FromString("a")),
		"huge size":    fmt.Sprintf(`{"layers":[{"digest":%q,"size":%d}]}`, digest.FromString("a"), int64(MaxLayerSize)+1),
		"negative":     fmt.Sprintf(`{"layers":[{"digest":%q,"size":-1}]}`, digest.FromString("a")),
		"layers count": `{"layers":[` + string(bytes.Repeat([]byte(`{},`), MaxLayers)) + `{}]}`,
	} {
		if _, err := parseManifest([]byte(doc)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// fakeStore keeps blobs by namespace and digest.
type fakeStore struct {
	mu    sync.Mutex
	blobs map[string][]byte
}

func (s *fakeStore) WriteBlob(ctx context.Context, desc ocispec.Descriptor, r io.Reader) error {
	ns, _ := namespaces.Namespace(ctx)
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blobs[ns+"/"+desc.Digest.String()] = b
	return nil
}

func TestPullKeepsBlobs(t *testing.T) {
	img := newImage(t, 2)
	store := &fakeStore{blobs: map[string][]byte{}}
	root := t.TempDir()
	p, err := New(Options{Registry: img.reg, StagingDir: filepath.Join(root, "pull"), ChunkSize: 8 << 10, Store: store, ReadAhead: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	for i := range img.layers {
		if err := p.Pull(ctx, snapshotDir(t, root, i), img.parent(i), img.chainIDs[i].String(), nil, img.labels(i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range img.layers {
		if b := store.blobs["k8s.io/"+l.Digest.String()]; !bytes.Equal(b, img.reg.blobs[l.Digest]) {
			t.Fatalf("layer %s: stored %d bytes in namespace k8s.io, want the blob", l.Digest, len(b))
		}
	}
}

// TestObserveFailedLastLayer: a layer that fails is counted as failed by
// the time its Pull returns, also when it is the image's last job (the
// image is then given up, which cancels the job's context).
func TestObserveFailedLastLayer(t *testing.T) {
	img := newImage(t, 1)
	blob := img.reg.blobs[img.layers[0].Digest]
	blob[len(blob)/2] ^= 0x20
	var mu sync.Mutex
	var seen []bool
	p, root := newPullerWith(t, img.reg, func(o *Options) {
		o.Observe = func(ok bool, _ int64, _ time.Duration) { mu.Lock(); seen = append(seen, ok); mu.Unlock() }
	})
	err := p.Pull(context.Background(), snapshotDir(t, root, 0), "", img.chainIDs[0].String(), nil, img.labels(0))
	if !errors.Is(err, chunkfetch.ErrDigest) {
		t.Fatalf("pull of a corrupt layer: %v, want a digest error", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0] {
		t.Errorf("observed %v by the time Pull returned, want one failure", seen)
	}
}
