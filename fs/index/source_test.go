package index

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var _ ContentSource = (*fakeSource)(nil)

// fakeSource is a content source of blobs per namespace. It answers what
// it holds whatever max says (a lying source: the store must check), and
// records the max it was given.
type fakeSource struct {
	mu    sync.Mutex
	blobs map[string]map[digest.Digest][]byte // by namespace
	err   error                               // returned by every read when set
	reads map[digest.Digest]int
	maxes map[digest.Digest]int64
}

func newFakeSource() *fakeSource {
	return &fakeSource{blobs: map[string]map[digest.Digest][]byte{}, reads: map[digest.Digest]int{}, maxes: map[digest.Digest]int64{}}
}

func (f *fakeSource) put(ns string, d digest.Digest, data []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blobs[ns] == nil {
		f.blobs[ns] = map[digest.Digest][]byte{}
	}
	f.blobs[ns][d] = data
}

func (f *fakeSource) ReadBlob(ctx context.Context, d digest.Digest, max int64) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads[d]++
	f.maxes[d] = max
	if f.err != nil {
		return nil, f.err
	}
	ns, _ := namespaces.Namespace(ctx)
	data, ok := f.blobs[ns][d]
	if !ok {
		return nil, fmt.Errorf("blob %s in namespace %q: %w", d, ns, errdefs.ErrNotFound)
	}
	return data, nil
}

func (f *fakeSource) count(d digest.Digest) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads[d]
}

func newSourcedStore(t *testing.T, root string, reg Registry, src ContentSource) *Store {
	t.Helper()
	s, err := New(Options{Root: root, Registry: reg, V2: true, ContentSource: src})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestContentSourceBeforeRegistry: an index and zTOC that are only in the
// content source (soci create, no push) serve Find and Open without the
// registry, and are copied to the store's disk, so that a restart restores
// the layer from local state with neither.
func TestContentSourceBeforeRegistry(t *testing.T) {
	f := newDiscoveryFixture(t)
	src := newFakeSource()
	src.put("ns", f.explicit.Digest, f.reg.manifests[f.explicit.Digest])
	src.put("ns", f.ztoc.Digest, f.reg.blobs[f.ztoc.Digest])
	down := &failingRegistry{}
	root := t.TempDir()
	ctx := namespaces.WithNamespace(context.Background(), "ns")

	s := newSourcedStore(t, root, down, src)
	idx, err := s.Find(ctx, testRef, f.manifest.Digest, f.explicit.Digest)
	if err != nil {
		t.Fatalf("Find of an index only in the content source: %v", err)
	}
	l, err := s.Open(ctx, testRef, idx, f.layer)
	if err != nil {
		t.Fatalf("Open of a zTOC only in the content source: %v", err)
	}
	l.Close()
	if down.calls != 0 {
		t.Errorf("%d registry calls, want none", down.calls)
	}
	if got := src.maxes[f.ztoc.Digest]; got != f.ztoc.Size {
		t.Errorf("zTOC read with max %d, want its size %d", got, f.ztoc.Size)
	}
	if got := src.maxes[f.explicit.Digest]; got != maxIndexBytes {
		t.Errorf("index read with max %d, want %d", got, maxIndexBytes)
	}

	// Restart: no source, no registry, local state only.
	s2 := newSourcedStore(t, root, down, nil)
	idx2, err := s2.FindLocal(context.Background(), f.manifest.Digest, f.explicit.Digest)
	if err != nil {
		t.Fatalf("FindLocal after restart: %v", err)
	}
	l2, err := s2.OpenLocal(context.Background(), idx2, f.layer)
	if err != nil {
		t.Fatalf("OpenLocal after restart: %v", err)
	}
	l2.Close()
	if down.calls != 0 {
		t.Errorf("%d registry calls, want none", down.calls)
	}
}

// TestContentSourceUntrusted: a copy in the content source that is not the
// blob asked for (digest), not of its size or over the bound is ignored
// and the registry's used, as is a source that fails; a copy that is the
// blob but not a valid index is refused as a download would be.
func TestContentSourceUntrusted(t *testing.T) {
	f := newDiscoveryFixture(t)
	indexBytes := f.reg.manifests[f.explicit.Digest]
	ztocBytes := f.reg.blobs[f.ztoc.Digest]
	cases := []struct {
		name        string
		index, ztoc []byte // nil: not in the source
		err         error
	}{
		{name: "other bytes", index: append([]byte(" "), indexBytes...), ztoc: append([]byte{}, ztocBytes[1:]...)},
		{name: "same size, other bytes", index: flipLast(indexBytes), ztoc: flipLast(ztocBytes)},
		{name: "too large", index: make([]byte, maxIndexBytes+1), ztoc: append(append([]byte{}, ztocBytes...), 0)},
		{name: "missing"},
		{name: "source fails", err: errors.New("containerd is down")},
		{name: "source fails with not found", err: errdefs.ErrNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := newFakeSource()
			src.err = tc.err
			if tc.index != nil {
				src.put("ns", f.explicit.Digest, tc.index)
			}
			if tc.ztoc != nil {
				src.put("ns", f.ztoc.Digest, tc.ztoc)
			}
			ctx := namespaces.WithNamespace(context.Background(), "ns")
			s := newSourcedStore(t, t.TempDir(), f.reg, src)
			manifests, blobs := f.reg.count("manifest", f.explicit.Digest), f.reg.count("blob", f.ztoc.Digest)
			idx, err := s.Find(ctx, testRef, f.manifest.Digest, f.explicit.Digest)
			if err != nil {
				t.Fatal(err)
			}
			l, err := s.Open(ctx, testRef, idx, f.layer)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if src.count(f.explicit.Digest) != 1 || src.count(f.ztoc.Digest) != 1 {
				t.Errorf("source reads: index %d, zTOC %d, want 1 each", src.count(f.explicit.Digest), src.count(f.ztoc.Digest))
			}
			if f.reg.count("manifest", f.explicit.Digest) != manifests+1 || f.reg.count("blob", f.ztoc.Digest) != blobs+1 {
				t.Error("the registry was not asked after the content source failed")
			}
			// The registry's copy, not the source's, is on disk.
			if data, ok := s.readBlob(ctx, f.ztoc.Digest); !ok || string(data) != string(ztocBytes) {
				t.Error("the zTOC on disk is not the registry's")
			}
		})
	}

	t.Run("malformed index", func(t *testing.T) {
		bad := validIndex(f)
		delete(bad.Layers[0].Annotations, "com.amazon.soci.image-layer-digest")
		data, err := json.Marshal(bad)
		if err != nil {
			t.Fatal(err)
		}
		d := digest.FromBytes(data)
		src := newFakeSource()
		src.put("ns", d, data)
		down := &failingRegistry{}
		s := newSourcedStore(t, t.TempDir(), down, src)
		_, err = s.Find(namespaces.WithNamespace(context.Background(), "ns"), testRef, f.manifest.Digest, d)
		errorsIs(t, err, ErrMalformedIndex)
		if down.calls != 0 {
			t.Errorf("%d registry calls for a verified but malformed index, want none", down.calls)
		}
	})
}

func flipLast(b []byte) []byte {
	c := append([]byte{}, b...)
	c[len(c)-1] ^= 0xff
	return c
}

// TestContentSourceNamespaces: the source is read in the request's
// namespace, and one namespace's "not found" is not remembered for another.
func TestContentSourceNamespaces(t *testing.T) {
	f := newDiscoveryFixture(t)
	// An index the registry does not have: "not found" there too.
	only := sociIndex(soci.SociIndexArtifactTypeV2, nil, map[digest.Digest]ocispec.Descriptor{f.layer: f.ztoc}, map[string]string{"n": "local"})
	data, err := json.Marshal(only)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(data)
	src := newFakeSource()
	src.put("b", d, data)
	s := newSourcedStore(t, t.TempDir(), f.reg, src)
	inA := namespaces.WithNamespace(context.Background(), "a")
	inB := namespaces.WithNamespace(context.Background(), "b")
	_, err = s.Find(inA, testRef, f.manifest.Digest, d)
	mustNotFound(t, err)
	idx, err := s.Find(inB, testRef, f.manifest.Digest, d)
	if err != nil {
		t.Fatalf("namespace b after a's miss: %v", err)
	}
	if idx.Digest != d {
		t.Errorf("found %s, want %s", idx.Digest, d)
	}
	if n := src.count(d); n != 2 {
		t.Errorf("%d source reads, want 2 (one per namespace)", n)
	}
	// a's miss is still remembered for a (the index is on disk now, but
	// the answer stands for the negative TTL, as without a source).
	_, err = s.Find(inA, testRef, f.manifest.Digest, d)
	mustNotFound(t, err)
}

// TestNoContentSource: without a source the store behaves as before
// ([content_store] type = "soci"): the registry is asked.
func TestNoContentSource(t *testing.T) {
	f := newDiscoveryFixture(t)
	s := newSourcedStore(t, t.TempDir(), f.reg, nil)
	before := f.reg.count("manifest", f.explicit.Digest)
	if _, err := s.Find(namespaces.WithNamespace(context.Background(), "ns"), testRef, f.manifest.Digest, f.explicit.Digest); err != nil {
		t.Fatal(err)
	}
	if f.reg.count("manifest", f.explicit.Digest) != before+1 {
		t.Error("the registry was not asked")
	}
}
