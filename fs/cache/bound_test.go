package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
)

func layerKey(l, i int) string { return fmt.Sprintf("sha256:%04d/%d-%d", l, i*100, (i+1)*100) }

func openBounded(t *testing.T, dir string, maxBytes int64) *Disk {
	t.Helper()
	d, err := OpenDisk(dir, DiskOptions{MaxBytes: maxBytes})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func put(t *testing.T, d *Disk, key string, n int) {
	t.Helper()
	if err := d.Put(key, bytes.Repeat([]byte{'x'}, n)); err != nil {
		t.Fatalf("Put(%s): %v", key, err)
	}
}

func has(d *Disk, key string) bool {
	_, err := d.Get(key)
	return err == nil
}

// diskBytes sums the sizes of the entry files under dir.
func diskBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() && e.Name() == tmpDir {
			return filepath.SkipDir
		}
		if e.Type().IsRegular() {
			info, err := e.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestBoundEvictsLeastRecentlyUsedLayer(t *testing.T) {
	dir := t.TempDir()
	d := openBounded(t, dir, 1000)
	for l := range 3 { // layers 0, 1, 2: 300 bytes each
		for i := range 3 {
			put(t, d, layerKey(l, i), 100)
		}
	}
	has(d, layerKey(0, 0)) // layer 0 is now more recent than layer 1
	for i := range 3 {     // layer 3 needs room: layer 1 goes, whole
		put(t, d, layerKey(3, i), 100)
	}
	for i := range 3 {
		if has(d, layerKey(1, i)) {
			t.Errorf("layer 1 span %d kept; it was the least recently used", i)
		}
		for _, l := range []int{0, 2, 3} {
			if !has(d, layerKey(l, i)) {
				t.Errorf("layer %d span %d evicted", l, i)
			}
		}
	}
	if used, bound := d.Size(); used != 900 || bound != 1000 {
		t.Errorf("Size = %d, %d; want 900, 1000", used, bound)
	}
	if got := diskBytes(t, dir); got != 900 {
		t.Errorf("%d bytes on disk, want 900", got)
	}
	if n := countFiles(t, filepath.Join(dir, tmpDir)); n != 0 {
		t.Errorf("%d evicted files left in the staging directory", n)
	}
}

func TestBoundPinnedLayersGoLast(t *testing.T) {
	d := openBounded(t, t.TempDir(), 600)
	put(t, d, layerKey(0, 0), 200) // oldest, pinned
	put(t, d, layerKey(1, 0), 200) // unpinned
	put(t, d, layerKey(2, 0), 200) // pinned
	for _, l := range []int{0, 2} {
		if err := d.Pin(fmt.Sprintf("sha256:%04d", l)); err != nil {
			t.Fatal(err)
		}
	}
	put(t, d, layerKey(2, 1), 200)
	if has(d, layerKey(1, 0)) || !has(d, layerKey(0, 0)) {
		t.Fatal("want the unpinned layer evicted before the older pinned one")
	}
	// Only pinned layers left: the least recently used one goes, never the
	// layer being written.
	put(t, d, layerKey(2, 2), 200)
	if has(d, layerKey(0, 0)) {
		t.Fatal("pinned layer 0 not evicted as a last resort")
	}
	if !has(d, layerKey(2, 0)) || !has(d, layerKey(2, 1)) || !has(d, layerKey(2, 2)) {
		t.Fatal("the layer being written lost entries")
	}
	d.Unpin("sha256:0002")
	d.Unpin("sha256:0000")
	if len(d.usage.pins) != 0 {
		t.Fatalf("pins left: %v", d.usage.pins)
	}
}

// TestBoundPinnedZTOCInsideOlderLayerGroup: a layer's directory may hold
// entries of its own (written before span keys named the zTOC) next to the
// group of a mounted (pinned) zTOC; evicting the older group moves the whole
// directory, so it counts as pinned and goes after the unpinned layer.
func TestBoundPinnedZTOCInsideOlderLayerGroup(t *testing.T) {
	dir := t.TempDir()
	d := openBounded(t, dir, 600)
	legacy := "sha256:0000/0-100"
	mounted := "sha256:0000/sha256:00aa/0-100"
	put(t, d, legacy, 200)         // oldest
	put(t, d, layerKey(1, 0), 200) // unpinned
	put(t, d, mounted, 200)
	if err := d.Pin("sha256:0000/sha256:00aa"); err != nil {
		t.Fatal(err)
	}
	put(t, d, layerKey(2, 0), 200)
	if has(d, layerKey(1, 0)) || !has(d, mounted) || !has(d, legacy) {
		t.Fatal("want the unpinned layer evicted before the group holding a mounted zTOC")
	}
	d.Unpin("sha256:0000/sha256:00aa")
	put(t, d, layerKey(2, 1), 200) // the zTOC's group (least recently used) goes
	put(t, d, layerKey(2, 2), 200) // then the layer's directory
	if has(d, legacy) || has(d, mounted) {
		t.Fatal("unpinned least recently used groups kept")
	}
	if b, _ := d.Size(); b != 600 || diskBytes(t, dir) != 600 {
		t.Fatalf("accounted %d bytes, %d on disk, want 600", b, diskBytes(t, dir))
	}
}

func TestBoundEntryTooLarge(t *testing.T) {
	dir := t.TempDir()
	d := openBounded(t, dir, 500)
	put(t, d, layerKey(0, 0), 300)
	put(t, d, layerKey(1, 0), 300) // evicts layer 0
	put(t, d, layerKey(2, 0), 100)
	// Layer 1 can't grow past the bound: refused, nothing else evicted.
	if err := d.Put(layerKey(1, 1), make([]byte, 300)); !errors.Is(err, ErrFull) {
		t.Fatalf("Put beyond the bound = %v, want ErrFull", err)
	}
	if err := d.Put(layerKey(3, 0), make([]byte, 501)); !errors.Is(err, ErrFull) {
		t.Fatalf("Put of an entry larger than the bound = %v, want ErrFull", err)
	}
	if !has(d, layerKey(2, 0)) || !has(d, layerKey(1, 0)) {
		t.Fatal("a refused Put evicted entries")
	}
	if n := countFiles(t, filepath.Join(dir, tmpDir)); n != 0 {
		t.Fatalf("%d temporary files left", n)
	}
}

func TestBoundRebuiltOnOpen(t *testing.T) {
	dir := t.TempDir()
	d := openBounded(t, dir, 0)
	for l := range 4 {
		for i := range 2 {
			put(t, d, layerKey(l, i), 100)
		}
	}
	put(t, d, "single", 50) // a key without a group directory
	if err := d.Remove(layerKey(3, 1)); err != nil {
		t.Fatal(err)
	}
	if used, _ := d.Size(); used != 750 {
		t.Fatalf("Size = %d, want 750", used)
	}
	d2 := openBounded(t, dir, 500)
	if used, bound := d2.Size(); used != 750 || bound != 500 {
		t.Fatalf("after reopen Size = %d, %d; want 750, 500", used, bound)
	}
	put(t, d2, layerKey(9, 0), 10)
	if used, _ := d2.Size(); used > 500 || diskBytes(t, dir) != used {
		t.Fatalf("after a Put over the bound: accounted %d, on disk %d, bound 500", used, diskBytes(t, dir))
	}
}

func TestRemoveKeepsAccounting(t *testing.T) {
	dir := t.TempDir()
	d := openBounded(t, dir, 0)
	for l := range 2 {
		for i := range 3 {
			put(t, d, layerKey(l, i), 100)
		}
	}
	put(t, d, layerKey(0, 0), 40) // overwrite
	for _, p := range []string{layerKey(1, 2), "sha256:0000", "sha256:absent"} {
		if err := d.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	if used, _ := d.Size(); used != 200 || diskBytes(t, dir) != 200 {
		t.Fatalf("accounted %d, on disk %d; want 200", used, diskBytes(t, dir))
	}
	if err := d.Remove("sha256"); err != nil {
		t.Fatal(err)
	}
	if used, _ := d.Size(); used != 0 {
		t.Fatalf("accounted %d after removing everything", used)
	}
}

func TestDiskFullCleansUp(t *testing.T) {
	dir := t.TempDir()
	d := openBounded(t, dir, 0)
	put(t, d, layerKey(0, 0), 100)
	d.FailWrites(syscall.ENOSPC)
	err := d.Put(layerKey(0, 1), make([]byte, 100))
	if !errors.Is(err, ErrFull) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Put on a full disk = %v, want ErrFull and ENOSPC", err)
	}
	if n := countFiles(t, filepath.Join(dir, tmpDir)); n != 0 {
		t.Fatalf("%d temporary files left after ENOSPC", n)
	}
	if _, err := d.Get(layerKey(0, 1)); !errdefs.IsNotFound(err) {
		t.Fatalf("failed entry readable: %v", err)
	}
	if got, err := d.Get(layerKey(0, 0)); err != nil || len(got) != 100 {
		t.Fatalf("earlier entry damaged: %d bytes, %v", len(got), err)
	}
	if used, _ := d.Size(); used != 100 {
		t.Fatalf("accounted %d, want 100", used)
	}
}

func TestBoundConcurrent(t *testing.T) {
	dir := t.TempDir()
	const bound = 5000
	d := openBounded(t, dir, bound)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			if err := d.Pin(fmt.Sprintf("sha256:%04d", w)); err != nil {
				t.Error(err)
				return
			}
			defer d.Unpin(fmt.Sprintf("sha256:%04d", w))
			for i := range 40 {
				l := (w + i) % 12
				if err := d.Put(layerKey(l, i%5), make([]byte, 100+i)); err != nil {
					t.Error(err)
					return
				}
				d.Get(layerKey((l+1)%12, i%5))
				if i%13 == 0 {
					if err := d.Remove(fmt.Sprintf("sha256:%04d", (l+3)%12)); err != nil {
						t.Error(err)
					}
				}
				if used, _ := d.Size(); used > bound {
					t.Errorf("accounted %d over the bound", used)
				}
			}
		})
	}
	wg.Wait()
	used, _ := d.Size()
	if on := diskBytes(t, dir); on != used || used > bound {
		t.Fatalf("accounted %d, on disk %d, bound %d", used, on, bound)
	}
}
