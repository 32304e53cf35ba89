package index

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const testRef = "registry.example/app:1"

var _ Registry = (*fakeRegistry)(nil)

// fakeRegistry serves manifests, blobs and referrers from maps and counts
// calls. gate, when set, holds every FetchManifest until it is closed; fail
// makes every call fail.
type fakeRegistry struct {
	mu        sync.Mutex
	manifests map[digest.Digest][]byte
	blobs     map[digest.Digest][]byte
	referrers map[digest.Digest][]ocispec.Descriptor
	calls     map[string]int
	gate      chan struct{}
	fail      bool
}

func newFakeRegistry() *fakeRegistry {
	return &fakeRegistry{
		manifests: map[digest.Digest][]byte{}, blobs: map[digest.Digest][]byte{},
		referrers: map[digest.Digest][]ocispec.Descriptor{}, calls: map[string]int{},
	}
}

func (r *fakeRegistry) count(call string, d digest.Digest) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[call+" "+d.String()]
}

func (r *fakeRegistry) enter(call string, d digest.Digest) error {
	r.mu.Lock()
	r.calls[call+" "+d.String()]++
	gate, fail := r.gate, r.fail
	r.mu.Unlock()
	if fail {
		return fmt.Errorf("registry is down")
	}
	if gate != nil && call == "manifest" {
		<-gate
	}
	return nil
}

func (r *fakeRegistry) FetchManifest(ctx context.Context, ref string, dgst digest.Digest) ([]byte, string, error) {
	if err := r.enter("manifest", dgst); err != nil {
		return nil, "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.manifests[dgst]
	if !ok {
		return nil, "", fmt.Errorf("manifest %s: %w", dgst, errdefs.ErrNotFound)
	}
	var m struct {
		MediaType string `json:"mediaType"`
	}
	_ = json.Unmarshal(b, &m)
	return b, m.MediaType, nil
}

func (r *fakeRegistry) FetchBlob(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	if err := r.enter("blob", desc.Digest); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return b, nil
}

func (r *fakeRegistry) Referrers(ctx context.Context, ref string, dgst digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	if err := r.enter("referrers", dgst); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []ocispec.Descriptor
	for _, d := range r.referrers[dgst] {
		if d.ArtifactType == artifactType {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("referrers of %s: %w", dgst, errdefs.ErrNotFound)
	}
	return out, nil
}

// putManifest stores m and returns its descriptor.
func (r *fakeRegistry) putManifest(t testing.TB, m ocispec.Manifest) ocispec.Descriptor {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(b)
	r.mu.Lock()
	r.manifests[d] = b
	r.mu.Unlock()
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: int64(len(b))}
}

// putBlob stores b and returns its descriptor.
func (r *fakeRegistry) putBlob(b []byte) ocispec.Descriptor {
	d := digest.FromBytes(b)
	r.mu.Lock()
	r.blobs[d] = b
	r.mu.Unlock()
	return ocispec.Descriptor{MediaType: soci.SociLayerMediaType, Digest: d, Size: int64(len(b))}
}

// sociIndex returns a SOCI index manifest of the given artifact type over
// zTOCs, as layer descriptors annotated with their image layer digests.
func sociIndex(artifactType string, subject *ocispec.Descriptor, ztocs map[digest.Digest]ocispec.Descriptor, annotations map[string]string) ocispec.Manifest {
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{
			MediaType: artifactType, Size: 2,
			Digest: "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
		},
		Subject:     subject,
		Annotations: annotations,
	}
	for layer, z := range ztocs {
		z.Annotations = map[string]string{
			soci.IndexAnnotationImageLayerDigest:    layer.String(),
			soci.IndexAnnotationImageLayerMediaType: ocispec.MediaTypeImageLayerGzip,
			soci.IndexAnnotationSociSpanSize:        "65536",
		}
		m.Layers = append(m.Layers, z)
	}
	return m
}

// imageManifest returns an image manifest of one layer, annotated with a v2
// index digest when indexDigest is not empty.
func imageManifest(layer digest.Digest, indexDigest digest.Digest) ocispec.Manifest {
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromString("config"), Size: 6},
		Layers:    []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: layer, Size: 100}},
	}
	if indexDigest != "" {
		m.Annotations = map[string]string{soci.ImageAnnotationSociIndexDigest: indexDigest.String()}
	}
	return m
}

func newStore(t testing.TB, root string, reg Registry, v1, v2 bool) *Store {
	t.Helper()
	s, err := New(Options{Root: root, Registry: reg, V1: v1, V2: v2})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustNotFound(t testing.TB, err error) {
	t.Helper()
	if !errdefs.IsNotFound(err) {
		t.Fatalf("got %v, want an error wrapping errdefs.ErrNotFound", err)
	}
}

// errorsIs is errors.Is with a test failure message.
func errorsIs(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got %v, want an error wrapping %v", err, target)
	}
}
