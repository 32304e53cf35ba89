package layer

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// want is the stat a path must show.
type want struct {
	mode     os.FileMode
	uid, gid uint32
	size     int64
	mtime    time.Time
	nlink    uint64
	rdev     uint64 // for devices
}

func checkStat(t *testing.T, mnt, name string, w want) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Lstat(filepath.Join(mnt, name))
	if err != nil {
		t.Fatalf("lstat %s: %v", name, err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode() != w.mode {
		t.Errorf("%s: mode %v, want %v", name, fi.Mode(), w.mode)
	}
	if st.Uid != w.uid || st.Gid != w.gid {
		t.Errorf("%s: owner %d:%d, want %d:%d", name, st.Uid, st.Gid, w.uid, w.gid)
	}
	if w.size >= 0 && fi.Size() != w.size {
		t.Errorf("%s: size %d, want %d", name, fi.Size(), w.size)
	}
	if !fi.ModTime().Equal(w.mtime) {
		t.Errorf("%s: mtime %v, want %v", name, fi.ModTime(), w.mtime)
	}
	if w.nlink != 0 && uint64(st.Nlink) != w.nlink {
		t.Errorf("%s: nlink %d, want %d", name, st.Nlink, w.nlink)
	}
	if uint64(st.Rdev) != w.rdev {
		t.Errorf("%s: rdev %#x, want %#x", name, st.Rdev, w.rdev)
	}
	return st
}

func TestAttributes(t *testing.T) {
	var b tocBuilder
	b.dir("etc")
	e := b.file("etc/passwd", "root:x:0:0\n")
	e.Mode, e.UID, e.GID = 0o640, 1000, 1001
	b.file("bin/su", "#!/bin/true\n").Mode = syscall.S_ISUID | 0o755
	b.file("bin/wall", "").Mode = syscall.S_ISGID | 0o711
	b.file("zero", "x")
	b.toc.Entries[len(b.toc.Entries)-1].Mode = 0
	b.dir("tmp").Mode = syscall.S_ISVTX | 0o777
	b.symlink("etc/link", "../tmp/x")
	b.add(Entry{Name: "dev/null", Type: TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666})
	b.add(Entry{Name: "dev/sda1", Type: TypeBlock, Devmajor: 8, Devminor: 1, Mode: 0o660, GID: 6})
	b.add(Entry{Name: "dev/nvme", Type: TypeBlock, Devmajor: 259, Devminor: 70000, Mode: 0o600})
	b.add(Entry{Name: "run/fifo", Type: TypeFifo, Mode: 0o600, UID: 3})
	b.file("old", "ancient").ModTime = time.Unix(-100, 0)
	b.file("usr/share/doc/README", "read me")
	u := b.dir("usr") // explicit entry after the implicit one
	u.Mode, u.UID, u.GID = 0o700, 5, 6
	mnt := b.mount(t, Options{})

	epoch := time.Unix(0, 0)
	checkStat(t, mnt, "etc", want{mode: fs.ModeDir | 0o755, size: dirSize, mtime: testTime, nlink: 2})
	checkStat(t, mnt, "etc/passwd", want{mode: 0o640, uid: 1000, gid: 1001, size: 11, mtime: testTime, nlink: 1})
	checkStat(t, mnt, "bin/su", want{mode: fs.ModeSetuid | 0o755, size: 12, mtime: testTime})
	checkStat(t, mnt, "bin/wall", want{mode: fs.ModeSetgid | 0o711, mtime: testTime})
	checkStat(t, mnt, "zero", want{mode: 0, size: 1, mtime: testTime})
	checkStat(t, mnt, "tmp", want{mode: fs.ModeDir | fs.ModeSticky | 0o777, size: -1, mtime: testTime})
	checkStat(t, mnt, "etc/link", want{mode: fs.ModeSymlink | 0o777, size: 8, mtime: testTime})
	checkStat(t, mnt, "dev/null", want{mode: fs.ModeDevice | fs.ModeCharDevice | 0o666, size: 0, mtime: testTime, rdev: unix.Mkdev(1, 3)})
	checkStat(t, mnt, "dev/sda1", want{mode: fs.ModeDevice | 0o660, gid: 6, size: 0, mtime: testTime, rdev: unix.Mkdev(8, 1)})
	checkStat(t, mnt, "dev/nvme", want{mode: fs.ModeDevice | 0o600, size: 0, mtime: testTime, rdev: unix.Mkdev(259, 70000)})
	checkStat(t, mnt, "run/fifo", want{mode: fs.ModeNamedPipe | 0o600, uid: 3, size: 0, mtime: testTime})
	checkStat(t, mnt, "old", want{mode: 0o644, size: 7, mtime: epoch})
	// Implicit parents are 0755 root:root; "usr" was updated by its entry.
	checkStat(t, mnt, "bin", want{mode: fs.ModeDir | 0o755, size: -1, mtime: epoch, nlink: 2})
	checkStat(t, mnt, "usr", want{mode: fs.ModeDir | 0o700, uid: 5, gid: 6, size: -1, mtime: testTime, nlink: 3})
	checkStat(t, mnt, "usr/share/doc", want{mode: fs.ModeDir | 0o755, size: -1, mtime: epoch})
	checkStat(t, mnt, ".", want{mode: fs.ModeDir | 0o755, size: -1, mtime: epoch, nlink: 8})

	if got, err := os.Readlink(filepath.Join(mnt, "etc/link")); err != nil || got != "../tmp/x" {
		t.Errorf("readlink = %q, %v", got, err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "usr/share/doc/README")); err != nil || string(got) != "read me" {
		t.Errorf("README = %q, %v", got, err)
	}
}

// TestStableInodes checks that a TOC gets the same inode numbers in every
// mount.
func TestStableInodes(t *testing.T) {
	var b tocBuilder
	b.file("etc/passwd", "root")
	b.add(Entry{Name: "dev/null", Type: TypeChar, Devmajor: 1, Devminor: 3})
	b.file("usr/share/doc/README", "read me")
	mnt, other := b.mount(t, Options{}), b.mount(t, Options{})
	for _, name := range []string{".", "etc", "etc/passwd", "dev/null", "usr/share/doc/README"} {
		a, _ := os.Lstat(filepath.Join(mnt, name))
		c, _ := os.Lstat(filepath.Join(other, name))
		if a.Sys().(*syscall.Stat_t).Ino != c.Sys().(*syscall.Stat_t).Ino {
			t.Errorf("%s: inode numbers differ between mounts", name)
		}
	}
}

func TestContent(t *testing.T) {
	var b tocBuilder
	big := make([]byte, 5<<20+123)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	b.file("empty", "")
	b.file("small", "hello, layer")
	b.file("big", string(big))
	b.file("after", "tail")
	mnt := b.mount(t, Options{})

	for name, content := range map[string]string{"empty": "", "small": "hello, layer", "after": "tail"} {
		if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || string(got) != content {
			t.Errorf("%s = %q, %v; want %q", name, got, err, content)
		}
	}
	got, err := os.ReadFile(filepath.Join(mnt, "big"))
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("big: %d bytes, %v; equal=%v", len(got), err, bytes.Equal(got, big))
	}
	f, err := os.Open(filepath.Join(mnt, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1000)
	for _, off := range []int64{0, 4095, 1 << 20, int64(len(big)) - 500} {
		n, err := f.ReadAt(buf, off)
		end := min(off+int64(len(buf)), int64(len(big)))
		if int64(n) != end-off || !bytes.Equal(buf[:n], big[off:end]) {
			t.Errorf("ReadAt(%d) = %d, %v", off, n, err)
		}
	}
	if n, err := f.ReadAt(buf, int64(len(big))+10); n != 0 {
		t.Errorf("ReadAt past EOF = %d, %v", n, err)
	}
}

func TestHardlinks(t *testing.T) {
	var b tocBuilder
	b.file("h/orig", "shared data")
	b.hardlink("h/link1", "h/orig")
	l := b.hardlink("other/link2", "h/orig")
	l.Mode, l.UID = 0o600, 7 // the link entry's metadata applies to the inode
	b.file("r/a", "first")
	b.hardlink("r/b", "r/a")
	b.file("r/a", "second") // replaces the name a, b keeps the old inode
	b.add(Entry{Name: "d/fifo", Type: TypeFifo, Mode: 0o600})
	b.hardlink("d/fifo2", "d/fifo")
	mnt := b.mount(t, Options{})

	var ino uint64
	for _, name := range []string{"h/orig", "h/link1", "other/link2"} {
		st := checkStat(t, mnt, name, want{mode: 0o600, uid: 7, size: 11, mtime: testTime, nlink: 3})
		if ino == 0 {
			ino = st.Ino
		} else if st.Ino != ino {
			t.Errorf("%s: inode %d, want %d", name, st.Ino, ino)
		}
		if got, err := os.ReadFile(filepath.Join(mnt, name)); err != nil || string(got) != "shared data" {
			t.Errorf("%s = %q, %v", name, got, err)
		}
	}
	checkStat(t, mnt, "r/a", want{mode: 0o644, size: 6, mtime: testTime, nlink: 1})
	checkStat(t, mnt, "r/b", want{mode: 0o644, size: 5, mtime: testTime, nlink: 1})
	if got, _ := os.ReadFile(filepath.Join(mnt, "r/b")); string(got) != "first" {
		t.Errorf("r/b = %q, want first", got)
	}
	checkStat(t, mnt, "d/fifo2", want{mode: fs.ModeNamedPipe | 0o644, size: 0, mtime: testTime, nlink: 2})
}

func TestDuplicatesLaterWins(t *testing.T) {
	var b tocBuilder
	b.file("dup/file", "one")
	b.file("dup/file", "two")
	b.file("dup/dir/child", "c")
	b.file("dup/dir", "now a file")
	b.file("dup/f2", "was a file")
	b.dir("dup/f2").Mode = 0o711
	b.dir("dup/merged")
	b.file("dup/merged/keep", "k")
	b.dir("dup/merged").Mode = 0o700
	mnt := b.mount(t, Options{})

	if got, _ := os.ReadFile(filepath.Join(mnt, "dup/file")); string(got) != "two" {
		t.Errorf("dup/file = %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(mnt, "dup/dir")); string(got) != "now a file" {
		t.Errorf("dup/dir = %q", got)
	}
	if _, err := os.Lstat(filepath.Join(mnt, "dup/dir/child")); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("dup/dir/child: %v", err)
	}
	if ents, err := os.ReadDir(filepath.Join(mnt, "dup/f2")); err != nil || len(ents) != 0 {
		t.Errorf("dup/f2: %v, %v", ents, err)
	}
	checkStat(t, mnt, "dup/merged", want{mode: fs.ModeDir | 0o700, size: -1, mtime: testTime})
	if _, err := os.Lstat(filepath.Join(mnt, "dup/merged/keep")); err != nil {
		t.Error(err)
	}
	names := readDirNames(t, filepath.Join(mnt, "dup"))
	if strings.Join(names, ",") != "dir,f2,file,merged" {
		t.Errorf("dup lists %v", names)
	}
}

func readDirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names
}

func TestErrors(t *testing.T) {
	var b tocBuilder
	b.file("etc/passwd", "root")
	mnt := b.mount(t, Options{})

	if _, err := os.Lstat(filepath.Join(mnt, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lstat nope: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(mnt, "etc/passwd/x")); !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("lstat under a file: %v", err)
	}
	p := filepath.Join(mnt, "etc/passwd")
	writes := map[string]func() error{
		"open for writing": func() error { f, err := os.OpenFile(p, os.O_WRONLY, 0); f.Close(); return err },
		"create":           func() error { return os.WriteFile(filepath.Join(mnt, "new"), nil, 0o644) },
		"mkdir":            func() error { return os.Mkdir(filepath.Join(mnt, "d"), 0o755) },
		"remove":           func() error { return os.Remove(p) },
		"chmod":            func() error { return os.Chmod(p, 0o600) },
		"rename":           func() error { return os.Rename(p, p+"2") },
		"setxattr":         func() error { return unix.Lsetxattr(p, "user.x", []byte("y"), 0) },
	}
	for name, write := range writes {
		if err := write(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", name, err)
		}
	}
}

func TestReaderErrors(t *testing.T) {
	var b tocBuilder
	b.file("f", "content")
	b.file("g", "more content")
	b.r.err = errors.New("registry unreachable")
	mnt := b.mount(t, Options{})
	if _, err := os.ReadFile(filepath.Join(mnt, "f")); !errors.Is(err, syscall.EIO) {
		t.Errorf("read with a failing reader: %v, want EIO", err)
	}

	var short tocBuilder
	short.file("f", "content")
	short.r.data = short.r.data[:len(short.r.data)-2] // stream ends early
	mnt = short.mount(t, Options{})
	if _, err := os.ReadFile(filepath.Join(mnt, "f")); !errors.Is(err, syscall.EIO) {
		t.Errorf("short read: %v, want EIO", err)
	}
}

func TestMountTable(t *testing.T) {
	var b tocBuilder
	b.file("f", "x")
	root, err := NewRoot(b.toc, &b.r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The name we set is go-fuse's own default.
	if def := fusefs.NewNodeFS(root, nil).(fmt.Stringer).String(); def != fuseName {
		t.Errorf("go-fuse's default name is %q, we use %q", def, fuseName)
	}
	mnt := b.mount(t, Options{})
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for line := range strings.Lines(string(info)) {
		fields := strings.Fields(line)
		if len(fields) < 10 || fields[4] != mnt {
			continue
		}
		found = true
		t.Logf("mountinfo: %s", strings.TrimSpace(line))
		sep := strings.Index(line, " - ")
		tail := strings.Fields(line[sep+3:])
		if tail[0] != "fuse.rawBridge" || tail[1] != fuseSource {
			t.Errorf("mount type %q source %q, want fuse.rawBridge %s", tail[0], tail[1], fuseSource)
		}
		if !strings.HasPrefix(fields[5], "ro") || strings.Contains(fields[5], "nosuid") || strings.Contains(fields[5], "nodev") {
			t.Errorf("mount options %q, want ro with suid and dev", fields[5])
		}
		if !strings.Contains(tail[2], "allow_other") {
			t.Errorf("super options %q lack allow_other", tail[2])
		}
	}
	if !found {
		t.Fatalf("%s not in mountinfo", mnt)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bsize != blockSize || st.Files != 2 || st.Blocks != 1 || st.Namelen != maxNameLen {
		t.Errorf("statfs = %+v", st)
	}
}

// TestPermissions checks that the kernel enforces the layer's modes for
// other users (default_permissions), as on an unpacked layer.
func TestPermissions(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skipf("needs setpriv to run as another user: %v", err)
	}
	var b tocBuilder
	b.file("secret", "s").Mode = 0o600
	b.file("public", "p")
	mnt := b.mount(t, Options{})
	if err := os.Chmod(filepath.Dir(mnt), 0o755); err != nil { // t.TempDir's 0700
		t.Fatal(err)
	}
	asNobody := func(name string) error {
		return exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
			"cat", filepath.Join(mnt, name)).Run()
	}
	if err := asNobody("public"); err != nil {
		t.Errorf("nobody reading a 0644 file: %v", err)
	}
	if err := asNobody("secret"); err == nil {
		t.Error("nobody read a 0600 root file")
	}
}
