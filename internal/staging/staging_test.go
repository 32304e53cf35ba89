package staging

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writeTemp(t *testing.T, d *Dir) string {
	t.Helper()
	f, err := d.CreateTemp("put-*")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return f.Name()
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// TestSweepSparesLiveOwners: opening a staging directory deletes those of
// dead owners (lock free) with their files, and never a live one's.
// Separate opens of a directory hold separate flocks, so two Dirs of one
// process stand for two processes.
func TestSweepSparesLiveOwners(t *testing.T) {
	parent := filepath.Join(t.TempDir(), ".tmp")
	live, err := Open(parent)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	dying, err := Open(parent)
	if err != nil {
		t.Fatal(err)
	}
	inLive, inDying := writeTemp(t, live), writeTemp(t, dying)
	// kill -9: the lock goes with the process, the directory stays.
	dying.lock.Close()

	next, err := Open(parent)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	if !exists(inLive) {
		t.Error("a live owner's in-flight file was swept")
	}
	if exists(dying.path) || exists(inDying) {
		t.Error("a dead owner's staging directory was left")
	}
	entries, _ := os.ReadDir(parent)
	if len(entries) != 2 {
		t.Errorf("%d entries in %s, want the two live staging directories", len(entries), parent)
	}
	if err := next.Close(); err != nil || exists(next.path) {
		t.Errorf("Close left its directory (%v)", err)
	}
}

// TestSweepLegacyByAge: entries an older version staged straight into the
// parent go only once they are older than LegacyAge.
func TestSweepLegacyByAge(t *testing.T) {
	parent := t.TempDir()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	old, fresh := filepath.Join(parent, "put-1"), filepath.Join(parent, "evict-2")
	for _, p := range []string{old, fresh} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(old, now.Add(-LegacyAge-time.Second), now.Add(-LegacyAge-time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(fresh, now.Add(-LegacyAge+time.Second), now.Add(-LegacyAge+time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := Sweep(parent, now)
	if err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want 1 entry deleted", n, err)
	}
	if exists(old) || !exists(fresh) {
		t.Errorf("old left %v, fresh deleted %v", exists(old), !exists(fresh))
	}
}

// TestCreateTempAfterWipe: an older version that clears the parent
// wholesale does not break the writes of a newer one.
func TestCreateTempAfterWipe(t *testing.T) {
	parent := t.TempDir()
	d, err := Open(parent)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	first := d.Path()
	if err := os.RemoveAll(parent); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	p := writeTemp(t, d)
	if filepath.Dir(p) == first || !exists(p) {
		t.Errorf("temp file %s: want it in a new staging directory", p)
	}
	if n, _ := Sweep(parent, time.Now()); n != 0 || !exists(p) {
		t.Error("the new staging directory is not locked")
	}
}
