package index

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// validIndex returns a SOCI v2 index over the fixture's zTOC, as a
// manifest to tamper with.
func validIndex(f *discoveryFixture) ocispec.Manifest {
	return sociIndex(soci.SociIndexArtifactTypeV2, nil, map[digest.Digest]ocispec.Descriptor{f.layer: f.ztoc}, nil)
}

// TestParseIndexRejects: one bad field anywhere rejects the whole index
// with an error wrapping ErrMalformedIndex that names the field and entry.
func TestParseIndexRejects(t *testing.T) {
	f := newDiscoveryFixture(t)
	extra := func(mod func(*ocispec.Descriptor)) func(*ocispec.Manifest) {
		return func(m *ocispec.Manifest) {
			d := ocispec.Descriptor{MediaType: soci.SociPrefetchMediaType, Digest: digest.FromString("x"), Size: 1}
			mod(&d)
			m.Layers = append(m.Layers, d)
		}
	}
	cases := []struct {
		name, want string
		mod        func(*ocispec.Manifest)
	}{
		{"traversal digest", "entry 1: digest", extra(func(d *ocispec.Descriptor) { d.Digest = "sha256:../../../../some/file" })},
		{"colon-less digest", "entry 1: digest", extra(func(d *ocispec.Descriptor) { d.Digest = "nocolon" })},
		{"empty digest", "entry 1: digest", extra(func(d *ocispec.Descriptor) { d.Digest = "" })},
		{"unregistered algorithm", "entry 1: digest", extra(func(d *ocispec.Descriptor) { d.Digest = "md5:0123456789abcdef0123456789abcdef" })},
		{"short hex", "entry 1: digest", extra(func(d *ocispec.Descriptor) { d.Digest = "sha256:abcd" })},
		{"upper-case hex", "entry 1: digest", extra(func(d *ocispec.Descriptor) {
			d.Digest = digest.Digest("sha256:" + strings.ToUpper(digest.FromString("x").Encoded()))
		})},
		{"negative size", "entry 1: size", extra(func(d *ocispec.Descriptor) { d.Size = -1 })},
		{"oversize artifact", "entry 1: size", extra(func(d *ocispec.Descriptor) { d.Size = DefaultMaxZTOCBytes + 1 })},
		{"empty media type", "entry 1: media type", extra(func(d *ocispec.Descriptor) { d.MediaType = "" })},
		{"odd media type", "entry 1: media type", extra(func(d *ocispec.Descriptor) { d.MediaType = "application/../x" })},
		{"bad layer annotation", "entry 1: annotation", extra(func(d *ocispec.Descriptor) {
			d.Annotations = map[string]string{soci.IndexAnnotationImageLayerDigest: "sha256:../x"}
		})},
		{"zTOC without layer", "entry 0: zTOC without annotation", func(m *ocispec.Manifest) { delete(m.Layers[0].Annotations, soci.IndexAnnotationImageLayerDigest) }},
		{"oversize zTOC", "entry 0: size", func(m *ocispec.Manifest) { m.Layers[0].Size = DefaultMaxZTOCBytes + 1 }},
		{"empty zTOC", "entry 0: size", func(m *ocispec.Manifest) { m.Layers[0].Size = 0 }},
		{"config digest", "config: digest", func(m *ocispec.Manifest) { m.Config.Digest = "sha256:../../x" }},
		{"config size", "config: size", func(m *ocispec.Manifest) { m.Config.Size = 1 << 40 }},
		{"subject digest", "subject: digest", func(m *ocispec.Manifest) {
			m.Subject = &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: "x", Size: 10}
		}},
		{"too many entries", "4097 entries, more than limits.max_index_entries (4096)", func(m *ocispec.Manifest) {
			for len(m.Layers) <= DefaultMaxIndexEntries {
				m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: soci.SociPrefetchMediaType, Digest: digest.FromString("x"), Size: 1})
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := validIndex(f)
			tc.mod(&m)
			data, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			_, err = parseIndex(digest.FromBytes(data), data, "", Limits{})
			if !errors.Is(err, ErrMalformedIndex) || !errors.Is(err, ErrNotSOCIIndex) {
				t.Fatalf("got %v, want an error wrapping ErrMalformedIndex", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %q", err, tc.want)
			}
		})
	}
	// The same checks pass a valid index, with a prefetch artifact.
	m := validIndex(f)
	extra(func(*ocispec.Descriptor) {})(&m)
	data, _ := json.Marshal(m)
	if _, err := parseIndex(digest.FromBytes(data), data, "", Limits{}); err != nil {
		t.Fatalf("valid index: %v", err)
	}
	if _, err := parseIndex(digest.FromBytes(data), data, "", Limits{MaxIndexEntries: 1}); err == nil {
		t.Error("an index of 2 entries passed MaxIndexEntries 1")
	}
}

// TestHostileIndexEntries: an index whose extra entry has a traversal or a
// colon-less digest is rejected by Find (so nothing is recorded or
// prefetched, and the image is pulled normally), and Prefetch handed such
// an index anyway neither reads nor deletes the canary file outside the
// store, nor panics.
func TestHostileIndexEntries(t *testing.T) {
	for _, bad := range []digest.Digest{"sha256:../../../../../canary", "nocolon", "sha256:" + digest.Digest(strings.Repeat("../", 30)) + "canary"} {
		t.Run(string(bad), func(t *testing.T) {
			f := newDiscoveryFixture(t)
			dir := t.TempDir()
			root := filepath.Join(dir, "a", "b", "index")
			canary := filepath.Join(dir, "canary")
			if err := os.WriteFile(canary, []byte("precious"), 0o600); err != nil {
				t.Fatal(err)
			}
			m := validIndex(f)
			hostile := ocispec.Descriptor{MediaType: soci.SociLayerMediaType, Digest: bad, Size: 8,
				Annotations: map[string]string{soci.IndexAnnotationImageLayerDigest: digest.FromString("other").String()}}
			m.Layers = append(m.Layers, hostile)
			d := f.reg.putManifest(t, m)
			s := newStore(t, root, f.reg, false, true)
			ctx := context.Background()
			_, err := s.Find(ctx, testRef, f.manifest.Digest, d.Digest)
			errorsIs(t, err, ErrMalformedIndex)
			if _, ok := s.readChoice(f.manifest.Digest); ok {
				t.Error("a rejected index was recorded as the manifest's choice")
			}
			// Prefetch with an index that bypassed parseIndex: every
			// entry taken as a zTOC.
			idx := &Index{Digest: d.Digest, Manifest: m, ztocList: m.Layers}
			s.Prefetch(ctx, testRef, idx)
			if _, err := s.ztocBytes(ctx, testRef, hostile); err == nil {
				t.Error("ztocBytes accepted a hostile descriptor")
			}
			if _, ok := s.readBlob(ctx, bad); ok {
				t.Error("readBlob read a hostile path")
			}
			if err := s.RemoveBlob(bad); err == nil {
				t.Error("RemoveBlob accepted a hostile digest")
			}
			s.dropBlob(ctx, bad)
			if err := s.Release(ctx, bad, nil); err == nil {
				t.Error("Release accepted a hostile digest")
			}
			waitPrefetch(t, s, f)
			if data, err := os.ReadFile(canary); err != nil || string(data) != "precious" {
				t.Fatalf("canary outside the store: %q, %v", data, err)
			}
			if n := f.reg.count("blob", bad); n != 0 {
				t.Errorf("fetched the hostile entry %d times", n)
			}
		})
	}
}

// waitPrefetch waits until the fixture's zTOC is local (Prefetch ran).
func waitPrefetch(t *testing.T, s *Store, f *discoveryFixture) {
	t.Helper()
	ctx := context.Background()
	// Open shares the prefetch's download, so it returns after it.
	if _, err := s.ztocBytes(ctx, testRef, f.ztoc); err != nil {
		t.Fatal(err)
	}
}

// TestLocalPath: only valid digests map to paths, and those stay under
// the store's root.
func TestLocalPath(t *testing.T) {
	s := newStore(t, t.TempDir(), newFakeRegistry(), false, true)
	good := digest.FromString("x")
	p, err := s.blobPath(good)
	if err != nil || p != filepath.Join(s.root, "blobs", "sha256", good.Encoded()) {
		t.Fatalf("blobPath(%s) = %q, %v", good, p, err)
	}
	for _, d := range []digest.Digest{"", "nocolon", ":", "sha256:", "sha256:../x", "../sha256:" + good[7:],
		"sha256:" + good[7:] + "/..", "sha256/../../x:" + good[7:], "SHA256:" + good[7:], "sha256:" + good[7:] + "\x00"} {
		if p, err := s.blobPath(d); err == nil {
			t.Errorf("blobPath(%q) = %q", d, p)
		}
		if p, err := s.choicePath(d); err == nil {
			t.Errorf("choicePath(%q) = %q", d, p)
		}
	}
}

// TestGuardRecovers: a panic in work on registry data becomes an error.
func TestGuardRecovers(t *testing.T) {
	_, err := guard(context.Background(), "test work", func() (int, error) {
		var d digest.Digest = "nocolon"
		_ = d.Encoded() // go-digest panics on a digest without ":"
		return 0, nil
	})
	if err == nil || !strings.Contains(err.Error(), "test work: internal error") {
		t.Fatalf("got %v, want the recovered panic", err)
	}
}

// TestMalformedIndexRemembered: a malformed index is remembered like "not
// found" (its bytes never change), so each layer of the image does not
// fetch it again.
func TestMalformedIndexRemembered(t *testing.T) {
	f := newDiscoveryFixture(t)
	m := validIndex(f)
	m.Layers[0].Digest = "nocolon"
	d := f.reg.putManifest(t, m)
	s := newStore(t, t.TempDir(), f.reg, false, true)
	for range 3 {
		_, err := s.Find(context.Background(), testRef, f.manifest.Digest, d.Digest)
		errorsIs(t, err, ErrMalformedIndex)
	}
	if n := f.reg.count("manifest", d.Digest); n != 1 {
		t.Errorf("malformed index fetched %d times, want 1", n)
	}
}

// TestStoreRelease: Release deletes the index blob, the record choosing
// it, its zTOCs not in use, and its memory; Find then needs the registry.
func TestStoreRelease(t *testing.T) {
	f := newDiscoveryFixture(t)
	s := newStore(t, t.TempDir(), f.reg, false, true)
	ctx := context.Background()
	idx, err := s.Find(ctx, testRef, f.manifest.Digest, "")
	if err != nil {
		t.Fatal(err)
	}
	s.Prefetch(ctx, testRef, idx)
	waitPrefetch(t, s, f)
	if err := s.Release(ctx, idx.Digest, func(z digest.Digest) bool { return z == f.ztoc.Digest }); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.readChoice(f.manifest.Digest); ok {
		t.Error("choice record kept")
	}
	if _, ok := s.readBlob(ctx, idx.Digest); ok {
		t.Error("index blob kept")
	}
	if _, ok := s.readBlob(ctx, f.ztoc.Digest); !ok {
		t.Error("zTOC in use deleted")
	}
	s.mu.Lock()
	n := len(s.indices) + len(s.answers) + len(s.prefetched)
	s.mu.Unlock()
	if n != 0 {
		t.Errorf("%d entries left in memory", n)
	}
	if err := s.Release(ctx, idx.Digest, nil); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	before := f.reg.count("manifest", idx.Digest)
	if _, err := s.Find(ctx, testRef, f.manifest.Digest, ""); err != nil {
		t.Fatal(err)
	}
	if f.reg.count("manifest", idx.Digest) != before+1 {
		t.Error("Find after Release did not fetch the index again")
	}
}

// TestMemoryBounds: the remembered answers and cached indices stay within
// their bounds however many images are looked up.
func TestMemoryBounds(t *testing.T) {
	f := newDiscoveryFixture(t)
	s := newStore(t, t.TempDir(), f.reg, false, true)
	for i := range maxAnswers + 10 {
		s.remember(digest.FromString(string(rune(i))).String(), nil, fmt.Errorf("no index: %w", errdefs.ErrNotFound))
	}
	for i := range maxCachedIndices + 10 {
		s.cacheIndex(&Index{Digest: digest.FromString(string(rune(i))), size: 1})
	}
	big := &Index{Digest: digest.FromString("big"), size: maxCachedIndexBytes - 5}
	s.cacheIndex(big)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.answers) > maxAnswers || len(s.indices) > maxCachedIndices || s.indexBytes > maxCachedIndexBytes {
		t.Errorf("%d answers, %d indices of %d bytes: over the bounds", len(s.answers), len(s.indices), s.indexBytes)
	}
	if s.indices[big.Digest] != big {
		t.Error("the newest index was not cached")
	}
}
