package index

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// TestLocalOnly: FindLocal and OpenLocal never ask the registry; what an
// earlier store put on disk is enough, and a missing piece is ErrNotLocal
// (errdefs.ErrNotFound) saying "not restorable from local state".
func TestLocalOnly(t *testing.T) {
	f := newDiscoveryFixture(t)
	root := t.TempDir()
	ctx := context.Background()

	// Nothing on disk yet: refused without a registry call, and nothing
	// remembered that would spoil a later Find.
	s := newStore(t, root, f.reg, false, true)
	before := f.reg.count("manifest", f.manifest.Digest)
	_, err := s.FindLocal(ctx, f.manifest.Digest, "")
	errorsIs(t, err, ErrNotLocal)
	mustNotFound(t, err)
	if !strings.Contains(err.Error(), "not restorable from local state") {
		t.Errorf("error %q does not say it is not restorable from local state", err)
	}
	if f.reg.count("manifest", f.manifest.Digest) != before {
		t.Error("FindLocal asked the registry")
	}
	idx, err := s.Find(ctx, testRef, f.manifest.Digest, "")
	if err != nil {
		t.Fatalf("Find after a failed FindLocal: %v", err)
	}
	l, err := s.Open(ctx, testRef, idx, f.layer)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := s.Find(ctx, testRef, f.manifest.Digest, f.explicit.Digest); err != nil {
		t.Fatal(err)
	}

	// A restarted store with no registry at all.
	down := &failingRegistry{}
	s2 := newStore(t, root, down, false, true)
	idx2, err := s2.FindLocal(ctx, f.manifest.Digest, "")
	if err != nil || idx2.Digest != idx.Digest {
		t.Fatalf("FindLocal after restart: %v, %v", idx2, err)
	}
	l2, err := s2.OpenLocal(ctx, idx2, f.layer)
	if err != nil {
		t.Fatalf("OpenLocal after restart: %v", err)
	}
	l2.Close()
	if _, err := s2.FindLocal(ctx, f.manifest.Digest, f.explicit.Digest); err != nil {
		t.Errorf("explicit index after restart: %v", err)
	}
	_, err = s2.FindLocal(ctx, f.manifest.Digest, f.v1.Digest)
	errorsIs(t, err, ErrNotLocal) // never fetched

	// The pull mode that found the index is now off.
	s3 := newStore(t, root, down, true, false)
	_, err = s3.FindLocal(ctx, f.manifest.Digest, "")
	errorsIs(t, err, ErrNotLocal)

	// The zTOC is gone from disk.
	z, err := s2.blobPath(f.ztoc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(z); err != nil {
		t.Fatal(err)
	}
	_, err = s2.OpenLocal(ctx, idx2, f.layer)
	errorsIs(t, err, ErrNotLocal)
	if down.calls != 0 {
		t.Errorf("%d registry calls by local-only lookups, want none", down.calls)
	}
}

// TestOpenLocalRefusedByLimits: a local zTOC that the current limits refuse
// is stale state (a failed precondition), not a broken mount.
func TestOpenLocalRefusedByLimits(t *testing.T) {
	f := newDiscoveryFixture(t)
	root := t.TempDir()
	ctx := context.Background()
	s := newStore(t, root, f.reg, false, true)
	idx, err := s.Find(ctx, testRef, f.manifest.Digest, "")
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Open(ctx, testRef, idx, f.layer)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	strict, err := New(Options{Root: root, Registry: &failingRegistry{}, V2: true, Limits: Limits{MaxZTOCEntries: 1}})
	if err != nil {
		t.Fatal(err)
	}
	idx2, err := strict.FindLocal(ctx, f.manifest.Digest, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = strict.OpenLocal(ctx, idx2, f.layer)
	if !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("zTOC over the limits: got %v, want a failed precondition", err)
	}
	_, err = strict.OpenLocal(ctx, idx2, digest.FromString("not indexed"))
	errorsIs(t, err, ErrNoZTOC)
}
