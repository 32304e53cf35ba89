package index

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// discoveryFixture is an image with a v2 index (annotation), a v1 index
// (referrer) and a third index to name explicitly; all cover one layer.
type discoveryFixture struct {
	reg                *fakeRegistry
	layer              digest.Digest
	ztoc               ocispec.Descriptor
	manifest, bare     ocispec.Descriptor // bare: the same image without annotation
	v1, v2, explicit   ocispec.Descriptor
	layerTar, layerBlb []byte
}

func newDiscoveryFixture(t testing.TB) *discoveryFixture {
	t.Helper()
	return newDiscoveryFixtureOf(t, newTestLayer(t, 200<<10, 64<<10))
}

// newDiscoveryFixtureOf is newDiscoveryFixture with the layer tl.
func newDiscoveryFixtureOf(t testing.TB, tl testLayer) *discoveryFixture {
	t.Helper()
	f := &discoveryFixture{reg: newFakeRegistry(), layer: digest.FromBytes(tl.blob), layerTar: tl.tar, layerBlb: tl.blob}
	f.ztoc = f.reg.putBlob(tl.ztocData)
	ztocs := map[digest.Digest]ocispec.Descriptor{f.layer: f.ztoc}
	f.v2 = f.reg.putManifest(t, sociIndex(soci.SociIndexArtifactTypeV2, nil, ztocs, map[string]string{"n": "v2"}))
	f.explicit = f.reg.putManifest(t, sociIndex(soci.SociIndexArtifactTypeV2, nil, ztocs, map[string]string{"n": "explicit"}))
	f.manifest = f.reg.putManifest(t, imageManifest(f.layer, f.v2.Digest))
	f.bare = f.reg.putManifest(t, imageManifest(f.layer, ""))
	for _, m := range []ocispec.Descriptor{f.manifest, f.bare} {
		subject := m
		f.v1 = f.reg.putManifest(t, sociIndex(soci.SociIndexArtifactTypeV1, &subject, ztocs, nil))
		f.v1.ArtifactType = soci.SociIndexArtifactTypeV1
		f.reg.referrers[m.Digest] = []ocispec.Descriptor{f.v1}
	}
	return f
}

func TestFindOrder(t *testing.T) {
	f := newDiscoveryFixture(t)
	v1Of := func(m ocispec.Descriptor) digest.Digest { return f.reg.referrers[m.Digest][0].Digest }
	cases := []struct {
		name             string
		v1, v2           bool
		manifest         ocispec.Descriptor
		explicit, want   digest.Digest
		wantNotFound     bool
		wantNoRegistryV1 bool
	}{
		{name: "explicit first", v1: true, v2: true, manifest: f.manifest, explicit: f.explicit.Digest, want: f.explicit.Digest},
		{name: "explicit with modes off", manifest: f.manifest, explicit: f.explicit.Digest, want: f.explicit.Digest},
		{name: "v2 before v1", v1: true, v2: true, manifest: f.manifest, want: f.v2.Digest, wantNoRegistryV1: true},
		{name: "v2 only", v2: true, manifest: f.manifest, want: f.v2.Digest},
		{name: "v1 only", v1: true, manifest: f.manifest, want: v1Of(f.manifest)},
		{name: "no annotation: v1", v1: true, v2: true, manifest: f.bare, want: v1Of(f.bare)},
		{name: "no annotation, v1 off", v2: true, manifest: f.bare, wantNotFound: true},
		{name: "both off", manifest: f.manifest, wantNotFound: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, t.TempDir(), f.reg, tc.v1, tc.v2)
			before := f.reg.count("referrers", tc.manifest.Digest)
			idx, err := s.Find(context.Background(), testRef, tc.manifest.Digest, tc.explicit)
			if tc.wantNotFound {
				mustNotFound(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if idx.Digest != tc.want {
				t.Errorf("found %s, want %s", idx.Digest, tc.want)
			}
			if d, ok := idx.ZTOC(f.layer); !ok || d.Digest != f.ztoc.Digest {
				t.Errorf("ZTOC(layer) = %v, %v", d.Digest, ok)
			}
			if tc.wantNoRegistryV1 && f.reg.count("referrers", tc.manifest.Digest) != before {
				t.Error("asked for referrers although the v2 annotation was there")
			}
		})
	}
}

func TestChooseV1(t *testing.T) {
	d := func(s string) digest.Digest { return digest.FromString(s) }
	desc := func(dg digest.Digest, created string) ocispec.Descriptor {
		a := map[string]string{}
		if created != "" {
			a[ocispec.AnnotationCreated] = created
		}
		return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: soci.SociIndexArtifactTypeV1, Digest: dg, Annotations: a}
	}
	a, b, c := d("a"), d("b"), d("c")
	greatest := max(a, b, c)
	cases := map[string]struct {
		descs []ocispec.Descriptor
		want  digest.Digest
	}{
		"newest wins":           {[]ocispec.Descriptor{desc(a, "2024-01-01T00:00:00Z"), desc(b, "2025-01-01T00:00:00Z"), desc(c, "")}, b},
		"order does not matter": {[]ocispec.Descriptor{desc(b, "2025-01-01T00:00:00Z"), desc(a, "2024-01-01T00:00:00Z")}, b},
		"tie: greatest digest":  {[]ocispec.Descriptor{desc(a, "2024-01-01T00:00:00Z"), desc(b, "2024-01-01T00:00:00Z"), desc(c, "2024-01-01T00:00:00Z")}, greatest},
		"none dated":            {[]ocispec.Descriptor{desc(c, ""), desc(a, "junk"), desc(b, "")}, greatest},
		"other types ignored": {[]ocispec.Descriptor{
			{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: "application/vnd.example.sig", Digest: greatest},
			desc(d("only"), ""),
		}, d("only")},
	}
	for name, tc := range cases {
		got, ok := chooseV1(tc.descs)
		if !ok || got.Digest != tc.want {
			t.Errorf("%s: chose %s, want %s", name, got.Digest, tc.want)
		}
	}
	if _, ok := chooseV1([]ocispec.Descriptor{{ArtifactType: soci.SociIndexArtifactTypeV1, Digest: "sha256:bad"}}); ok {
		t.Error("chose an invalid digest")
	}
}

func TestFindSeveralV1(t *testing.T) {
	f := newDiscoveryFixture(t)
	ztocs := map[digest.Digest]ocispec.Descriptor{f.layer: f.ztoc}
	var refs []ocispec.Descriptor
	for i, created := range []string{"2024-03-01T00:00:00Z", "2025-06-01T12:00:00Z", "2023-01-01T00:00:00Z"} {
		subject := f.bare
		d := f.reg.putManifest(t, sociIndex(soci.SociIndexArtifactTypeV1, &subject, ztocs, map[string]string{"i": string(rune('0' + i))}))
		d.ArtifactType = soci.SociIndexArtifactTypeV1
		d.Annotations = map[string]string{ocispec.AnnotationCreated: created}
		refs = append(refs, d)
	}
	f.reg.referrers[f.bare.Digest] = refs
	s := newStore(t, t.TempDir(), f.reg, true, true)
	idx, err := s.Find(context.Background(), testRef, f.bare.Digest, "")
	if err != nil {
		t.Fatal(err)
	}
	if idx.Digest != refs[1].Digest {
		t.Errorf("found %s, want the newest %s", idx.Digest, refs[1].Digest)
	}
}

func TestFindRejects(t *testing.T) {
	f := newDiscoveryFixture(t)
	// A v1 referrer whose subject is another image.
	other := f.reg.putManifest(t, imageManifest(digest.FromString("x"), ""))
	subject := f.manifest
	wrong := f.reg.putManifest(t, sociIndex(soci.SociIndexArtifactTypeV1, &subject, nil, nil))
	wrong.ArtifactType = soci.SociIndexArtifactTypeV1
	f.reg.referrers[other.Digest] = []ocispec.Descriptor{wrong}
	// An image whose v2 annotation names a plain image manifest.
	notIndex := f.reg.putManifest(t, imageManifest(f.layer, f.bare.Digest))
	s := newStore(t, t.TempDir(), f.reg, true, true)
	ctx := context.Background()

	_, err := s.Find(ctx, testRef, f.manifest.Digest, f.bare.Digest)
	errorsIs(t, err, ErrNotSOCIIndex)
	if errdefs.IsNotFound(err) {
		t.Error("a non-SOCI index reads as not found")
	}
	_, err = s.Find(ctx, testRef, notIndex.Digest, "")
	errorsIs(t, err, ErrNotSOCIIndex)
	if _, err = s.Find(ctx, testRef, other.Digest, ""); err == nil || errdefs.IsNotFound(err) {
		t.Errorf("v1 index with another subject: %v", err)
	}
	for _, bad := range []struct{ manifest, explicit digest.Digest }{{"", ""}, {"sha256:nothex", ""}, {f.manifest.Digest, "md5:abc"}} {
		if _, err := s.Find(ctx, testRef, bad.manifest, bad.explicit); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Find(%q, %q) = %v, want invalid argument", bad.manifest, bad.explicit, err)
		}
	}
}

func TestFindMemoized(t *testing.T) {
	f := newDiscoveryFixture(t)
	s := newStore(t, t.TempDir(), f.reg, true, true)
	now := time.Now()
	s.now = func() time.Time { return now }
	ctx := context.Background()
	for range 3 {
		if _, err := s.Find(ctx, testRef, f.manifest.Digest, ""); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.reg.count("manifest", f.manifest.Digest); n != 1 {
		t.Errorf("image manifest fetched %d times, want 1", n)
	}
	if n := f.reg.count("manifest", f.v2.Digest); n != 1 {
		t.Errorf("index fetched %d times, want 1", n)
	}

	// No index: remembered for the negative TTL.
	none := f.reg.putManifest(t, imageManifest(digest.FromString("y"), ""))
	for range 3 {
		_, err := s.Find(ctx, testRef, none.Digest, "")
		mustNotFound(t, err)
	}
	if n := f.reg.count("manifest", none.Digest); n != 1 {
		t.Errorf("image without index fetched %d times within the TTL, want 1", n)
	}
	now = now.Add(DefaultNegativeTTL + time.Second)
	_, err := s.Find(ctx, testRef, none.Digest, "")
	mustNotFound(t, err)
	if n := f.reg.count("manifest", none.Digest); n != 2 {
		t.Errorf("image without index fetched %d times after the TTL, want 2", n)
	}

	// A registry failure is not remembered.
	f.reg.fail = true
	if _, err := s.Find(ctx, testRef, f.bare.Digest, ""); err == nil || errdefs.IsNotFound(err) {
		t.Fatalf("registry down: %v", err)
	}
	f.reg.fail = false
	if _, err := s.Find(ctx, testRef, f.bare.Digest, ""); err != nil {
		t.Errorf("after the registry recovered: %v", err)
	}
}

// TestFindSingleflight runs in a bubble, where synctest.Wait tells when
// every caller waits.
func TestFindSingleflight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newDiscoveryFixture(t)
		f.reg.gate = make(chan struct{})
		s := newStore(t, t.TempDir(), f.reg, true, true)
		const callers = 16
		var wg sync.WaitGroup
		errs := make(chan error, callers)
		idxs := make(chan *Index, callers)
		for range callers {
			wg.Go(func() {
				idx, err := s.Find(context.Background(), testRef, f.manifest.Digest, "")
				errs <- err
				idxs <- idx
			})
		}
		// Every caller blocks: the one the registry serves on the gate, the
		// others on the shared answer.
		synctest.Wait()
		close(f.reg.gate)
		wg.Wait()
		close(errs)
		close(idxs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		first := <-idxs
		for idx := range idxs {
			if idx != first {
				t.Fatal("callers got different Index values")
			}
		}
		if n := f.reg.count("manifest", f.manifest.Digest); n != 1 {
			t.Errorf("%d concurrent Finds fetched the manifest %d times, want 1", callers, n)
		}
	})
}

func TestFindCallerCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newDiscoveryFixture(t)
		f.reg.gate = make(chan struct{})
		s := newStore(t, t.TempDir(), f.reg, true, true)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := s.Find(ctx, testRef, f.manifest.Digest, "")
			done <- err
		}()
		synctest.Wait() // the lookup waits at the registry
		if n := f.reg.count("manifest", f.manifest.Digest); n != 1 {
			t.Fatalf("%d manifest requests, want 1 waiting", n)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Find: %v", err)
		}
		close(f.reg.gate) // the shared lookup finishes for the next caller
		if _, err := s.Find(context.Background(), testRef, f.manifest.Digest, ""); err != nil {
			t.Fatal(err)
		}
		if n := f.reg.count("manifest", f.manifest.Digest); n != 1 {
			t.Errorf("manifest fetched %d times, want 1", n)
		}
	})
}
