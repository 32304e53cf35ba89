package fs

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/remote"
)

// fakeLayer caches a span of a layer and stores a zTOC for it, as a mount
// would, and returns the mountedLayer release looks at.
func fakeLayer(t *testing.T, f *FS, name string) *mountedLayer {
	t.Helper()
	l := digest.FromString("layer " + name)
	z := digest.FromString("ztoc " + name)
	if err := f.cache.Put(l.String()+"/0-5", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(f.opts.Root, "index", "blobs", string(z.Algorithm()), z.Encoded())
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("ztoc"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &mountedLayer{name: l.String(), ztoc: z, unpin: func() {}}
}

func kept(t *testing.T, f *FS, m *mountedLayer) bool {
	t.Helper()
	_, cerr := f.cache.Get(m.name + "/0-5")
	_, zerr := os.Stat(filepath.Join(f.opts.Root, "index", "blobs", string(m.ztoc.Algorithm()), m.ztoc.Encoded()))
	if (cerr == nil) != (zerr == nil) {
		t.Fatalf("layer %s: cache error %v but zTOC error %v", m.name, cerr, zerr)
	}
	return cerr == nil
}

func TestReleaseFreesUnusedLayersOnly(t *testing.T) {
	f, err := New(Options{Root: t.TempDir(), Registry: remote.New(remote.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	one, two := fakeLayer(t, f, "one"), fakeLayer(t, f, "two")
	f.mounted["/mnt/two"] = two

	// Another snapshot still has the same layer mounted.
	f.mounted["/mnt/one-again"] = &mountedLayer{name: one.name, ztoc: one.ztoc}
	f.release(t.Context(), one)
	if !kept(t, f, one) {
		t.Fatal("released a layer another mount uses")
	}
	delete(f.mounted, "/mnt/one-again")

	// The layer is being mounted again.
	end := f.begin(one.name)
	f.release(t.Context(), one)
	if !kept(t, f, one) {
		t.Fatal("released a layer being mounted")
	}
	end()

	f.release(t.Context(), one)
	if kept(t, f, one) {
		t.Fatal("layer used by no mount kept")
	}
	if !kept(t, f, two) {
		t.Fatal("another layer's cache or zTOC deleted")
	}
	if len(f.pending) != 0 {
		t.Fatalf("pending mounts left: %v", f.pending)
	}
}

func TestReleaseWaitsForTheSnapshotDirectory(t *testing.T) {
	f, err := New(Options{Root: t.TempDir(), Registry: remote.New(remote.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	removed, stays := fakeLayer(t, f, "removed"), fakeLayer(t, f, "stays")
	mpRemoved, mpStays := filepath.Join(t.TempDir(), "fs"), filepath.Join(t.TempDir(), "fs")
	for _, mp := range []string{mpRemoved, mpStays} {
		if err := os.Mkdir(mp, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	f.releaseWhenGone(t.Context(), removed, mpRemoved)
	f.releaseWhenGone(t.Context(), stays, mpStays)
	time.Sleep(5 * releasePoll)
	if !kept(t, f, removed) || !kept(t, f, stays) {
		t.Fatal("released while the snapshot directory is still there")
	}
	if err := os.Remove(mpRemoved); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	ztoc := filepath.Join(f.opts.Root, "index", "blobs", string(removed.ztoc.Algorithm()), removed.ztoc.Encoded())
	for _, err := os.Stat(ztoc); err == nil; _, err = os.Stat(ztoc) {
		if time.Now().After(deadline) {
			t.Fatal("layer not released after its snapshot directory went")
		}
		time.Sleep(releasePoll)
	}
	if kept(t, f, removed) {
		t.Fatal("released layer kept")
	}
	// A shutdown deletes nothing, even if the directory goes afterwards.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(mpStays); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * releasePoll)
	if !kept(t, f, stays) {
		t.Fatal("layer released after Close")
	}
}
