package span

import (
	"bytes"
	"errors"
	"testing"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

// TestFullDiskCacheServesFromMemory: a real disk cache that refuses every
// Put (its bound is smaller than a span) still serves reads.
func TestFullDiskCacheServesFromMemory(t *testing.T) {
	l := buildLayer(t, 12, []int{1000, 1000}, true)
	d, err := cache.OpenDisk(t.TempDir(), cache.DiskOptions{MaxBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Put(testKey+"/0-1000", make([]byte, 1000)); !errors.Is(err, cache.ErrFull) {
		t.Fatalf("Put over the bound = %v, want ErrFull", err)
	}
	f := &fakeFetcher{blob: l.blob}
	m := newManager(t, l, f, d, nil)
	p := make([]byte, 2000)
	if n, err := m.FetchAt(t.Context(), p, 0); n != len(p) || err != nil || !bytes.Equal(p, l.data) {
		t.Fatalf("FetchAt = %d, %v", n, err)
	}
	if used, _ := d.Size(); used != 0 {
		t.Fatalf("cache holds %d bytes", used)
	}
}
