package index

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestOpen(t *testing.T) {
	f := newDiscoveryFixture(t)
	s := newStore(t, t.TempDir(), f.reg, false, true)
	ctx := context.Background()
	idx, err := s.Find(ctx, testRef, f.manifest.Digest, "")
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Open(ctx, testRef, idx, f.layer)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.DisableXattrs {
		t.Error("DisableXattrs without the annotation")
	}
	if l.Spans.CompressedSize != int64(len(f.layerBlb)) || len(l.TOC.Entries) == 0 {
		t.Errorf("layer: %d-byte blob, %d entries", l.Spans.CompressedSize, len(l.TOC.Entries))
	}
	s0 := l.Spans.Spans[0]
	out, err := l.Decompress(f.layerBlb[s0.CompressedStart:s0.CompressedEnd], 0)
	if err != nil || !bytes.Equal(out, f.layerTar[:s0.UncompressedEnd]) {
		t.Errorf("span 0: %v", err)
	}

	_, err = s.Open(ctx, testRef, idx, digest.FromString("not indexed"))
	errorsIs(t, err, ErrNoZTOC)
	if errdefs.IsNotFound(err) {
		t.Error("ErrNoZTOC reads as errdefs.ErrNotFound")
	}
}

func TestOpenDisableXattrsAndPrefetch(t *testing.T) {
	f := newDiscoveryFixture(t)
	m := sociIndex(soci.SociIndexArtifactTypeV2, nil, map[digest.Digest]ocispec.Descriptor{f.layer: f.ztoc}, nil)
	m.Layers[0].Annotations[soci.IndexAnnotationDisableXAttrs] = "true"
	// A prefetch artifact for the same layer comes first and is skipped.
	prefetch := f.reg.putBlob([]byte(`{"version":"v1"}`))
	prefetch.MediaType = soci.SociPrefetchMediaType
	prefetch.Annotations = map[string]string{soci.IndexAnnotationImageLayerDigest: f.layer.String()}
	m.Layers = append([]ocispec.Descriptor{prefetch}, m.Layers...)
	d := f.reg.putManifest(t, m)
	s := newStore(t, t.TempDir(), f.reg, false, true)
	idx, err := s.Find(context.Background(), testRef, f.manifest.Digest, d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Open(context.Background(), testRef, idx, f.layer)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if !l.DisableXattrs {
		t.Error("DisableXattrs not set from the annotation")
	}
}

// failingRegistry fails every call.
type failingRegistry struct{ calls int }

func (r *failingRegistry) FetchManifest(context.Context, string, digest.Digest) ([]byte, string, error) {
	r.calls++
	return nil, "", errors.New("no registry")
}

func (r *failingRegistry) FetchBlob(context.Context, string, ocispec.Descriptor) ([]byte, error) {
	r.calls++
	return nil, errors.New("no registry")
}

func (r *failingRegistry) Referrers(context.Context, string, digest.Digest, string) ([]ocispec.Descriptor, error) {
	r.calls++
	return nil, errors.New("no registry")
}

func TestRestartWithoutRegistry(t *testing.T) {
	for _, mode := range []string{"v1", "v2"} {
		t.Run(mode, func(t *testing.T) {
			f := newDiscoveryFixture(t)
			root := t.TempDir()
			manifest := f.manifest
			if mode == "v1" {
				manifest = f.bare
			}
			ctx := context.Background()
			s := newStore(t, root, f.reg, true, true)
			idx, err := s.Find(ctx, testRef, manifest.Digest, "")
			if err != nil {
				t.Fatal(err)
			}
			l, err := s.Open(ctx, testRef, idx, f.layer)
			if err != nil {
				t.Fatal(err)
			}
			l.Close()
			if _, err := s.Find(ctx, testRef, manifest.Digest, f.explicit.Digest); err != nil {
				t.Fatal(err)
			}

			down := &failingRegistry{}
			s2 := newStore(t, root, down, true, true)
			idx2, err := s2.Find(ctx, testRef, manifest.Digest, "")
			if err != nil {
				t.Fatalf("Find after restart: %v", err)
			}
			if idx2.Digest != idx.Digest {
				t.Errorf("after restart found %s, want %s", idx2.Digest, idx.Digest)
			}
			l2, err := s2.Open(ctx, testRef, idx2, f.layer)
			if err != nil {
				t.Fatalf("Open after restart: %v", err)
			}
			l2.Close()
			if _, err := s2.Find(ctx, testRef, manifest.Digest, f.explicit.Digest); err != nil {
				t.Errorf("explicit index after restart: %v", err)
			}
			if down.calls != 0 {
				t.Errorf("%d registry calls after restart, want none", down.calls)
			}
			if mode == "v2" { // the v1 index was never fetched, so it needs the registry
				if _, err := s2.Find(ctx, testRef, manifest.Digest, f.v1.Digest); err == nil || down.calls != 1 {
					t.Errorf("index never stored: %v after %d registry calls", err, down.calls)
				}
			}
		})
	}
}

func TestRestartRespectsModes(t *testing.T) {
	f := newDiscoveryFixture(t)
	root := t.TempDir()
	ctx := context.Background()
	if _, err := newStore(t, root, f.reg, true, false).Find(ctx, testRef, f.bare.Digest, ""); err != nil {
		t.Fatal(err)
	}
	// v1 turned off: the recorded v1 choice no longer counts.
	_, err := newStore(t, root, &failingRegistry{}, false, true).Find(ctx, testRef, f.bare.Digest, "")
	if err == nil {
		t.Error("used a v1 index recorded before v1 was disabled")
	}
}

func TestOpenVerifies(t *testing.T) {
	f := newDiscoveryFixture(t)
	root := t.TempDir()
	s := newStore(t, root, f.reg, false, true)
	ctx := context.Background()
	idx, err := s.Find(ctx, testRef, f.manifest.Digest, "")
	if err != nil {
		t.Fatal(err)
	}
	// The registry serves other bytes than the index names.
	good := f.reg.blobs[f.ztoc.Digest]
	f.reg.blobs[f.ztoc.Digest] = append(bytes.Clone(good[:len(good)-1]), good[len(good)-1]^1)
	if _, err := s.Open(ctx, testRef, idx, f.layer); err == nil || !strings.Contains(err.Error(), "digest mismatch") {
		t.Fatalf("tampered zTOC: %v", err)
	}
	f.reg.blobs[f.ztoc.Digest] = good
	l, err := s.Open(ctx, testRef, idx, f.layer)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()

	// A corrupted local copy is dropped and fetched again.
	path, err := s.blobPath(f.ztoc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("rot"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := f.reg.count("blob", f.ztoc.Digest)
	l, err = s.Open(ctx, testRef, idx, f.layer)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if f.reg.count("blob", f.ztoc.Digest) != before+1 {
		t.Error("the corrupted local zTOC was not fetched again")
	}

	// A zTOC with the right digest but garbage content.
	junk := f.reg.putBlob([]byte(strings.Repeat("junk", 100)))
	m := sociIndex(soci.SociIndexArtifactTypeV2, nil, map[digest.Digest]ocispec.Descriptor{f.layer: junk}, nil)
	bad := f.reg.putManifest(t, m)
	idx, err = s.Find(ctx, testRef, f.manifest.Digest, bad.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(ctx, testRef, idx, f.layer); err == nil || !strings.Contains(err.Error(), "zTOC") {
		t.Errorf("garbage zTOC: %v", err)
	}
}

func TestOpenSingleflight(t *testing.T) {
	f := newDiscoveryFixture(t)
	s := newStore(t, t.TempDir(), f.reg, false, true)
	ctx := context.Background()
	idx, err := s.Find(ctx, testRef, f.manifest.Digest, "")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			l, err := s.Open(ctx, testRef, idx, f.layer)
			if err != nil {
				t.Error(err)
				return
			}
			l.Close()
		})
	}
	wg.Wait()
	if n := f.reg.count("blob", f.ztoc.Digest); n != 1 {
		t.Errorf("zTOC fetched %d times, want 1", n)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Options{Registry: newFakeRegistry()}); err == nil {
		t.Error("New without Root succeeded")
	}
	if _, err := New(Options{Root: t.TempDir()}); err == nil {
		t.Error("New without Registry succeeded")
	}
}
