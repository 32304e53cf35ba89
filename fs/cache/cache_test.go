package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
)

// store is what both caches provide.
type store interface {
	Get(key string) ([]byte, error)
	GetAt(key string, b []byte, off int64) (int, error)
	Put(key string, data []byte) error
	Remove(prefix string) error
}

var (
	_ store = (*Disk)(nil)
	_ store = (*Memory)(nil)
)

const layer = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func forEach(t *testing.T, f func(t *testing.T, c store)) {
	t.Run("disk", func(t *testing.T) {
		d, err := NewDisk(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		f(t, d)
	})
	t.Run("memory", func(t *testing.T) { f(t, NewMemory()) })
}

func TestPutGetMiss(t *testing.T) {
	forEach(t, func(t *testing.T, c store) {
		key := layer + "/0-5"
		if _, err := c.Get(key); !errdefs.IsNotFound(err) {
			t.Fatalf("Get before Put: err = %v, want not found", err)
		}
		if _, err := c.GetAt(key, make([]byte, 1), 0); !errdefs.IsNotFound(err) {
			t.Fatalf("GetAt before Put: err = %v, want not found", err)
		}
		if err := c.Put(key, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		got, err := c.Get(key)
		if err != nil || string(got) != "hello" {
			t.Fatalf("Get = %q, %v; want hello", got, err)
		}
		buf := make([]byte, 3)
		if n, err := c.GetAt(key, buf, 1); n != 3 || err != nil || string(buf) != "ell" {
			t.Fatalf("GetAt(1) = %d %q %v", n, buf, err)
		}
		if n, err := c.GetAt(key, buf, 3); n != 2 || !errors.Is(err, io.EOF) {
			t.Fatalf("GetAt(3) past end = %d, %v; want 2, EOF", n, err)
		}
		if err := c.Put(key, []byte("world")); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.Get(key); string(got) != "world" {
			t.Fatalf("after overwrite Get = %q", got)
		}
		if _, err := c.Get(layer + "/5-10"); !errdefs.IsNotFound(err) {
			t.Fatalf("other key: err = %v, want not found", err)
		}
	})
}

func TestRemove(t *testing.T) {
	forEach(t, func(t *testing.T, c store) {
		other := "sha256:ffff"
		for _, k := range []string{layer + "/0-1", layer + "/1-2", other + "/0-1"} {
			if err := c.Put(k, []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Remove(layer); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{layer + "/0-1", layer + "/1-2"} {
			if _, err := c.Get(k); !errdefs.IsNotFound(err) {
				t.Errorf("Get(%s) after Remove: %v, want not found", k, err)
			}
		}
		if _, err := c.Get(other + "/0-1"); err != nil {
			t.Errorf("other layer removed too: %v", err)
		}
		if err := c.Remove("sha256:absent"); err != nil {
			t.Errorf("Remove of a missing prefix: %v", err)
		}
		if err := c.Put(layer+"/0-1", []byte("y")); err != nil {
			t.Errorf("Put after Remove: %v", err)
		}
	})
}

func TestBadKeys(t *testing.T) {
	bad := []string{"", "/etc/passwd", "..", "../x", "a/../../x", "a/./b", "a//b", "a/", ":a", "sha256:",
		".tmp/x", "a/.hidden", "a\x00b"}
	forEach(t, func(t *testing.T, c store) {
		for _, k := range bad {
			if err := c.Put(k, []byte("x")); !errdefs.IsInvalidArgument(err) {
				t.Errorf("Put(%q) = %v, want invalid argument", k, err)
			}
			if _, err := c.Get(k); !errdefs.IsInvalidArgument(err) {
				t.Errorf("Get(%q) = %v, want invalid argument", k, err)
			}
			if err := c.Remove(k); !errdefs.IsInvalidArgument(err) {
				t.Errorf("Remove(%q) = %v, want invalid argument", k, err)
			}
		}
	})
}

func TestDiskLayoutAndRestart(t *testing.T) {
	dir := t.TempDir()
	d, err := NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	key := "sha256:abcd/0-4096"
	if err := d.Put(key, []byte("data")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "sha256", "abcd", "0-4096")); err != nil {
		t.Fatalf("entry not at its sanitized path: %v", err)
	}
	// A crash mid-Put leaves a temporary file in the dead process's
	// staging directory (its lock is free); a live process (d) may be
	// writing one in its own meanwhile.
	crashed := filepath.Join(dir, tmpDir, "s-crashed")
	if err := os.MkdirAll(crashed, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(crashed, "put-crashed"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	inflight := filepath.Join(d.staging.Path(), "put-inflight")
	if err := os.WriteFile(inflight, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	d2, err := NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if got, err := d2.Get(key); err != nil || string(got) != "data" {
		t.Fatalf("after restart Get = %q, %v", got, err)
	}
	if _, err := os.Lstat(crashed); !os.IsNotExist(err) {
		t.Errorf("dead process's staging directory left after reopen (%v)", err)
	}
	if _, err := os.Lstat(inflight); err != nil {
		t.Errorf("a live process's in-flight write was deleted: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if n := countFiles(t, filepath.Join(dir, tmpDir)); n != 0 {
		t.Fatalf("%d temporary files left after the first process closed", n)
	}
}

func TestDiskNoTempFilesLeft(t *testing.T) {
	dir := t.TempDir()
	d, err := NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := d.Put(fmt.Sprintf("%s/%d-%d", layer, i, i+1), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// A failing Put (the key's directory is a file) must clean up too.
	if err := d.Put(layer+"/0-1/x", []byte("x")); err == nil {
		t.Fatal("Put under a file succeeded")
	}
	if n := countFiles(t, filepath.Join(dir, tmpDir)); n != 0 {
		t.Fatalf("%d temporary files left", n)
	}
	if n := countFiles(t, dir); n != 20 {
		t.Fatalf("%d files in the cache, want 20", n)
	}
}

func TestConcurrentPutSameKey(t *testing.T) {
	forEach(t, func(t *testing.T, c store) {
		key := layer + "/0-65536"
		const writers = 16
		var wg sync.WaitGroup
		errs := make(chan error, writers*2)
		for w := range writers {
			wg.Go(func() {
				data := bytes.Repeat([]byte{byte(w)}, 1<<16)
				for range 5 {
					if err := c.Put(key, data); err != nil {
						errs <- err
						return
					}
					got, err := c.Get(key)
					if err != nil {
						errs <- err
						return
					}
					if len(got) != len(data) || !bytes.Equal(got, bytes.Repeat(got[:1], len(got))) {
						errs <- fmt.Errorf("torn entry of %d bytes", len(got))
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func countFiles(t *testing.T, root string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(root, func(_ string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
