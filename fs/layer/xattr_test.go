package layer

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// listXattrs returns the xattr names of path, probing the size first.
func listXattrs(t *testing.T, path string) []string {
	t.Helper()
	size, err := unix.Llistxattr(path, nil)
	if err != nil {
		t.Fatalf("llistxattr size probe %s: %v", path, err)
	}
	if size == 0 {
		return nil
	}
	buf := make([]byte, size)
	n, err := unix.Llistxattr(path, buf)
	if err != nil || n != size {
		t.Fatalf("llistxattr %s = %d, %v; probe said %d", path, n, err, size)
	}
	if size > 1 {
		if _, err := unix.Llistxattr(path, buf[:size-1]); !errors.Is(err, syscall.ERANGE) {
			t.Errorf("llistxattr with a short buffer: %v, want ERANGE", err)
		}
	}
	return strings.Split(strings.TrimSuffix(string(buf), "\x00"), "\x00")
}

// getXattr reads one xattr, probing the size first.
func getXattr(path, name string) (string, error) {
	size, err := unix.Lgetxattr(path, name, nil)
	if err != nil {
		return "", err
	}
	buf := make([]byte, size)
	n, err := unix.Lgetxattr(path, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// netRawCap is a VFS_CAP_REVISION_2 security.capability value granting
// CAP_NET_RAW (as on ping); the kernel checks the format on getxattr.
const netRawCap = "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// xattrLayer is a layer with xattrs of every kind.
func xattrLayer() *tocBuilder {
	var b tocBuilder
	b.file("f", "x").Xattrs = map[string]string{
		"user.mime":           "text/plain",
		"security.capability": netRawCap,
		"trusted.empty":       "",
	}
	b.dir("d").Xattrs = map[string]string{"user.dir": "yes"}
	b.file("d/.wh..wh..opq", "")
	b.symlink("s", "f").Xattrs = map[string]string{"user.dropped": "v", "trusted.kept": "k"}
	b.file("plain", "")
	b.dir("d").Xattrs = map[string]string{"user.later": "merged"} // a repeated dir adds xattrs
	b.file("h", "y").Xattrs = map[string]string{"user.a": "1"}
	b.hardlink("h2", "h").Xattrs = map[string]string{"user.b": "2"}
	return &b
}

func TestXattrs(t *testing.T) {
	mnt := xattrLayer().mount(t, Options{})

	f := filepath.Join(mnt, "f")
	if got := listXattrs(t, f); !slices.Equal(got, []string{"security.capability", "trusted.empty", "user.mime"}) {
		t.Errorf("f lists %q", got)
	}
	if v, err := getXattr(f, "user.mime"); err != nil || v != "text/plain" {
		t.Errorf("user.mime = %q, %v", v, err)
	}
	if v, err := getXattr(f, "security.capability"); err != nil || v != netRawCap {
		t.Errorf("security.capability = %q, %v", v, err)
	}
	if v, err := getXattr(f, "trusted.empty"); err != nil || v != "" {
		t.Errorf("trusted.empty = %q, %v", v, err)
	}
	if _, err := unix.Lgetxattr(f, "user.mime", make([]byte, 3)); !errors.Is(err, syscall.ERANGE) {
		t.Errorf("short buffer: %v, want ERANGE", err)
	}
	if _, err := unix.Lgetxattr(f, "user.missing", make([]byte, 64)); !errors.Is(err, syscall.ENODATA) {
		t.Errorf("missing xattr: %v, want ENODATA", err)
	}
	d := filepath.Join(mnt, "d")
	if got := listXattrs(t, d); !slices.Equal(got, []string{opaqueXattr, "user.dir", "user.later"}) {
		t.Errorf("d lists %q", got)
	}
	if v, err := getXattr(d, opaqueXattr); err != nil || v != "y" {
		t.Errorf("opaque = %q, %v", v, err)
	}
	if got := listXattrs(t, filepath.Join(mnt, "s")); !slices.Equal(got, []string{"trusted.kept"}) {
		t.Errorf("symlink lists %q (user.* cannot be set on symlinks)", got)
	}
	if got := listXattrs(t, filepath.Join(mnt, "plain")); len(got) != 0 {
		t.Errorf("plain lists %q", got)
	}
	if got := listXattrs(t, filepath.Join(mnt, "h")); !slices.Equal(got, []string{"user.a", "user.b"}) {
		t.Errorf("hardlinked file lists %q", got)
	}
}

// TestXattrsDisabled checks com.amazon.soci.disable-xattrs: nothing but the
// opaque marker is reported.
func TestXattrsDisabled(t *testing.T) {
	off := xattrLayer().mount(t, Options{DisableXattrs: true})
	if got := listXattrs(t, filepath.Join(off, "f")); len(got) != 0 {
		t.Errorf("disabled xattrs: f lists %q", got)
	}
	if _, err := unix.Lgetxattr(filepath.Join(off, "f"), "user.mime", make([]byte, 64)); !errors.Is(err, syscall.ENODATA) {
		t.Errorf("disabled xattrs: getxattr %v, want ENODATA", err)
	}
	if got := listXattrs(t, filepath.Join(off, "d")); !slices.Equal(got, []string{opaqueXattr}) {
		t.Errorf("disabled xattrs: d lists %q", got)
	}
	if v, err := getXattr(filepath.Join(off, "d"), opaqueXattr); err != nil || v != "y" {
		t.Errorf("disabled xattrs: opaque = %q, %v", v, err)
	}
}

func TestWhiteouts(t *testing.T) {
	var b tocBuilder
	b.dir("a")
	w := b.file("a/.wh.x", "")
	w.UID, w.GID = 4, 5
	b.file("a/y", "y")
	b.file("b/.wh..wh..opq", "") // opaque marker in an implicit directory
	b.file("b/new", "n")
	b.file(".wh.top", "")
	b.file("c/.wh..wh.meta", "") // whites out ".wh.meta", as containerd does
	mnt := b.mount(t, Options{})

	checkStat(t, mnt, "a/x", want{mode: os.ModeDevice | os.ModeCharDevice, uid: 4, gid: 5, size: 0, mtime: testTime, rdev: 0})
	checkStat(t, mnt, "top", want{mode: os.ModeDevice | os.ModeCharDevice, size: 0, mtime: testTime})
	checkStat(t, mnt, "c/.wh.meta", want{mode: os.ModeDevice | os.ModeCharDevice, size: 0, mtime: testTime})
	for _, hidden := range []string{"a/.wh.x", "b/.wh..wh..opq", ".wh.top", "c/.wh..wh.meta"} {
		if _, err := os.Lstat(filepath.Join(mnt, hidden)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want ENOENT", hidden, err)
		}
	}
	if got := readDirNames(t, filepath.Join(mnt, "a")); !slices.Equal(got, []string{"x", "y"}) {
		t.Errorf("a lists %v", got)
	}
	if got := readDirNames(t, filepath.Join(mnt, "b")); !slices.Equal(got, []string{"new"}) {
		t.Errorf("b lists %v", got)
	}
	if v, err := getXattr(filepath.Join(mnt, "b"), opaqueXattr); err != nil || v != "y" {
		t.Errorf("b opaque = %q, %v", v, err)
	}
	if _, err := getXattr(filepath.Join(mnt, "a"), opaqueXattr); !errors.Is(err, syscall.ENODATA) {
		t.Errorf("a opaque: %v, want ENODATA", err)
	}
	if v, err := os.ReadFile(filepath.Join(mnt, "a/y")); err != nil || !bytes.Equal(v, []byte("y")) {
		t.Errorf("a/y = %q, %v", v, err)
	}
}
