package index

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/internal/staging"
)

// TestStoreStaging: blobs are staged in the store's own staging directory
// (nothing is left next to them); a new store deletes a dead process's
// staging directory but not a live one's, and the temporary files older
// versions left next to their targets once they are old.
func TestStoreStaging(t *testing.T) {
	root := t.TempDir()
	live := newStore(t, root, newFakeRegistry(), false, true)
	defer live.Close()
	if err := live.writeBlob(digest.FromString("blob"), []byte("x"), ""); err != nil {
		t.Fatal(err)
	}
	algDir := filepath.Join(root, "blobs", "sha256")
	if entries, _ := os.ReadDir(algDir); len(entries) != 1 {
		t.Fatalf("blobs/sha256 holds %d entries, want just the blob", len(entries))
	}
	inflight := filepath.Join(live.staging.Path(), "put-inflight")
	dead := filepath.Join(root, stagingDir, "s-dead")
	for _, p := range []string{inflight, filepath.Join(dead, "put-x")} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	oldTemp, youngTemp := filepath.Join(algDir, ".tmp-old"), filepath.Join(algDir, ".tmp-young")
	for _, p := range []string{oldTemp, youngTemp} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := now.Add(-staging.LegacyAge - time.Minute)
	if err := os.Chtimes(oldTemp, old, old); err != nil {
		t.Fatal(err)
	}

	next := newStore(t, root, newFakeRegistry(), false, true)
	defer next.Close()
	for p, want := range map[string]bool{inflight: true, dead: false, oldTemp: false, youngTemp: true} {
		if _, err := os.Lstat(p); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", p, err == nil, want)
		}
	}
}
