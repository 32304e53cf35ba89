package layer

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOverlay stacks two FUSE layers under a read-only overlayfs and checks
// that whiteouts and opaque directories act as in a containerd unpack.
func TestOverlay(t *testing.T) {
	var lower tocBuilder
	lower.dir("a")
	lower.file("a/x", "x from lower")
	lower.file("a/y", "y from lower")
	lower.dir("d")
	lower.file("d/old", "old")
	lower.file("keep", "kept")
	lowerMnt := lower.mount(t, Options{})

	var upper tocBuilder
	upper.dir("a")
	upper.file("a/.wh.x", "")
	upper.dir("d")
	upper.file("d/.wh..wh..opq", "")
	upper.file("d/new", "new")
	upperMnt := upper.mount(t, Options{DisableXattrs: true}) // opaque must still work

	merged := t.TempDir()
	data := "lowerdir=" + upperMnt + ":" + lowerMnt
	if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, data); err != nil {
		t.Fatalf("mount overlay %s: %v", data, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(merged, 0); err != nil {
			t.Errorf("unmount overlay: %v", err)
		}
	})

	if got := readDirNames(t, filepath.Join(merged, "a")); !slices.Equal(got, []string{"y"}) {
		t.Errorf("merged a lists %v, want [y]", got)
	}
	if got := readDirNames(t, filepath.Join(merged, "d")); !slices.Equal(got, []string{"new"}) {
		t.Errorf("merged d lists %v, want [new]", got)
	}
	if got := readDirNames(t, merged); !slices.Equal(got, []string{"a", "d", "keep"}) {
		t.Errorf("merged root lists %v", got)
	}
	for _, gone := range []string{"a/x", "d/old"} {
		if _, err := os.Lstat(filepath.Join(merged, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want ENOENT", gone, err)
		}
	}
	for name, content := range map[string]string{"a/y": "y from lower", "d/new": "new", "keep": "kept"} {
		if got, err := os.ReadFile(filepath.Join(merged, name)); err != nil || string(got) != content {
			t.Errorf("%s = %q, %v; want %q", name, got, err, content)
		}
	}
}
