package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// fdsUnder counts the process's descriptors open on regular files under
// dir (removed ones included: their link ends in " (deleted)"), not the
// staging directory's lock.
func fdsUnder(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	n := 0
	for _, e := range ents {
		fd := filepath.Join("/proc/self/fd", e.Name())
		target, err := os.Readlink(fd)
		if err != nil || !strings.HasPrefix(target, dir+"/") {
			continue
		}
		if st, err := os.Stat(fd); err == nil && st.Mode().IsRegular() {
			n++
		}
	}
	return n
}

func openDiskFDs(t *testing.T, maxBytes int64, maxFiles int) (*Disk, string) {
	t.Helper()
	dir := t.TempDir()
	d, err := OpenDisk(dir, DiskOptions{MaxBytes: maxBytes, MaxOpenFiles: maxFiles})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, dir
}

func entry(key string, n int) []byte { return bytes.Repeat([]byte(key[len(key)-1:]), n) }

// readKey reads the whole entry through GetAt.
func readKey(d *Disk, key string, n int) ([]byte, error) {
	b := make([]byte, n)
	got, err := d.GetAt(key, b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:got], nil
}

func TestFDsBounded(t *testing.T) {
	d, dir := openDiskFDs(t, 0, 3)
	for i := range 5 {
		put(t, d, layerKey(0, i), 100)
	}
	for round := range 2 {
		for i := range 5 {
			k := layerKey(0, i)
			got, err := readKey(d, k, 100)
			if err != nil || len(got) != 100 {
				t.Fatalf("round %d: read %s: %d bytes, %v", round, k, len(got), err)
			}
		}
	}
	if got := d.fds.kept(); got != 3 {
		t.Errorf("kept %d files open, want the bound 3", got)
	}
	if got := fdsUnder(t, dir); got != 3 {
		t.Errorf("%d descriptors open under the cache, want 3", got)
	}
	d.Close()
	if got := fdsUnder(t, dir); got != 0 {
		t.Errorf("%d descriptors open after Close, want 0", got)
	}
}

func TestFDsNoneKept(t *testing.T) {
	d, dir := openDiskFDs(t, 0, -1)
	put(t, d, layerKey(0, 0), 100)
	if got, err := readKey(d, layerKey(0, 0), 100); err != nil || len(got) != 100 {
		t.Fatalf("read: %d bytes, %v", len(got), err)
	}
	if n, m := d.fds.kept(), fdsUnder(t, dir); n != 0 || m != 0 {
		t.Errorf("kept %d, %d descriptors open, want none", n, m)
	}
}

func TestFDsClosedOnRemove(t *testing.T) {
	d, dir := openDiskFDs(t, 0, 0)
	for i := range 3 {
		put(t, d, layerKey(1, i), 100)
		put(t, d, layerKey(2, i), 100)
		readKey(d, layerKey(1, i), 10)
		readKey(d, layerKey(2, i), 10)
	}
	if err := d.Remove("sha256:0001"); err != nil {
		t.Fatal(err)
	}
	if got := fdsUnder(t, dir); got != 3 {
		t.Errorf("%d descriptors open after removing one layer, want the other layer's 3", got)
	}
	if _, err := readKey(d, layerKey(1, 0), 10); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("read of a removed entry: %v, want not found", err)
	}
	if got, err := readKey(d, layerKey(2, 0), 100); err != nil || len(got) != 100 {
		t.Errorf("read of the other layer: %d bytes, %v", len(got), err)
	}
}

func TestFDsClosedOnEvict(t *testing.T) {
	d, dir := openDiskFDs(t, 300, 0)
	for i := range 3 {
		put(t, d, layerKey(1, i), 100)
		readKey(d, layerKey(1, i), 10)
	}
	put(t, d, layerKey(2, 0), 100) // evicts layer 1
	if has(d, layerKey(1, 0)) {
		t.Fatal("layer 1 not evicted")
	}
	if got := fdsUnder(t, dir); got != 0 {
		t.Errorf("%d descriptors open on evicted entries, want 0", got)
	}
	if _, err := readKey(d, layerKey(1, 0), 10); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("read of an evicted entry: %v, want not found", err)
	}
}

// A short entry (a crash before its data was written) replaced by a Put is
// read anew, not through the file kept open.
func TestFDsReplacedEntryReadAnew(t *testing.T) {
	d, dir := openDiskFDs(t, 0, 0)
	k := layerKey(0, 0)
	put(t, d, k, 10)
	if got, _ := readKey(d, k, 100); len(got) != 10 {
		t.Fatalf("read %d bytes of the short entry, want 10", len(got))
	}
	put(t, d, k, 100)
	if got, err := readKey(d, k, 100); err != nil || len(got) != 100 {
		t.Errorf("read after replacement: %d bytes, %v; want 100", len(got), err)
	}
	if got := fdsUnder(t, dir); got != 1 {
		t.Errorf("%d descriptors open, want 1 (the replaced file closed)", got)
	}
}

// A file dropped while a reader uses it is closed by that reader's release.
func TestFDsDroppedInUseClosedByLastReader(t *testing.T) {
	c := newFDs(4)
	f := tempFile(t)
	o := c.add("k", "a/k", f, c.generation())
	o2 := c.get("k")
	c.drop("a")
	if _, err := f.ReadAt(make([]byte, 1), 0); err != nil {
		t.Fatalf("file closed while in use: %v", err)
	}
	c.release(o)
	if _, err := f.ReadAt(make([]byte, 1), 0); err != nil {
		t.Fatalf("file closed while in use by a second reader: %v", err)
	}
	c.release(o2)
	if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("read after the last release: %v, want closed", err)
	}
	if c.get("k") != nil || c.kept() != 0 {
		t.Error("dropped file still kept")
	}
}

// A file opened while a drop ran is used once, not kept: it may be a name
// the drop moved away.
func TestFDsOpenedAcrossDropNotKept(t *testing.T) {
	c := newFDs(4)
	gen := c.generation()
	c.drop("a")
	f := tempFile(t)
	o := c.add("k", "a/k", f, gen)
	if c.kept() != 0 {
		t.Fatal("file opened across a drop kept")
	}
	c.release(o)
	if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("read after release: %v, want closed", err)
	}
}

func tempFile(t *testing.T) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// Readers of many entries through few descriptors, while entries are
// replaced and a layer is removed and put back, read either the entry's
// bytes or not found, and leave no descriptor open beyond the bound.
func TestFDsConcurrentReaders(t *testing.T) {
	d, dir := openDiskFDs(t, 0, 2)
	const entries = 6
	for l := range 2 {
		for i := range entries {
			k := layerKey(l, i)
			if err := d.Put(k, entry(k, 100)); err != nil {
				t.Fatal(err)
			}
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 300 {
				k := layerKey((r+j)%2, j%entries)
				got, err := readKey(d, k, 100)
				switch {
				case errors.Is(err, errdefs.ErrNotFound):
				case err != nil:
					errs <- fmt.Errorf("read %s: %w", k, err)
					return
				case !bytes.Equal(got, entry(k, 100)):
					errs <- fmt.Errorf("read %s: %q", k, got)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for j := range 30 {
			k := layerKey(0, j%entries)
			if err := d.Put(k, entry(k, 100)); err != nil {
				errs <- err
				return
			}
			if err := d.Remove("sha256:0001"); err != nil {
				errs <- err
				return
			}
			for i := range entries {
				k := layerKey(1, i)
				if err := d.Put(k, entry(k, 100)); err != nil {
					errs <- err
					return
				}
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := fdsUnder(t, dir); got > 2 {
		t.Errorf("%d descriptors open under the cache, want at most the bound 2", got)
	}
}

// Reads noted outside the lock keep their order with Puts for eviction: a
// layer read before another layer was written is the older one.
func TestFDsReadsKeepLRUOrder(t *testing.T) {
	for name, tc := range map[string]struct {
		readFirstAfterSecond bool
		evicted              int
	}{
		"read before the second put": {false, 1},
		"read after the second put":  {true, 2},
	} {
		t.Run(name, func(t *testing.T) {
			d, _ := openDiskFDs(t, 200, 0)
			put(t, d, layerKey(1, 0), 100)
			if !tc.readFirstAfterSecond {
				readKey(d, layerKey(1, 0), 10)
			}
			put(t, d, layerKey(2, 0), 100)
			if tc.readFirstAfterSecond {
				readKey(d, layerKey(1, 0), 10)
			}
			put(t, d, layerKey(3, 0), 100) // evicts one layer
			for l := 1; l <= 2; l++ {
				if gone := !has(d, layerKey(l, 0)); gone != (l == tc.evicted) {
					t.Errorf("layer %d evicted: %v, want layer %d evicted", l, gone, tc.evicted)
				}
			}
		})
	}
}

// A read of a kept file does not wait for the lock Put and Remove hold
// across renames.
func TestFDsReadDoesNotWaitForNames(t *testing.T) {
	d, _ := openDiskFDs(t, 0, 0)
	k := layerKey(0, 0)
	put(t, d, k, 100)
	readKey(d, k, 10) // keeps the file open
	d.mu.Lock()
	defer d.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		_, err := readKey(d, k, 100)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read waited for the cache's name lock")
	}
}
