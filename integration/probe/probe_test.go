package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func TestChain(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	if err := os.WriteFile(a, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := run([]string{
		"sha256", a, filepath.Join(dir, "missing"), filepath.Join(a, "under-file"), dir,
		"--", "write", filepath.Join(dir, "new file"), "x",
		"--", "sha256", filepath.Join(dir, "new file"),
		"--", "read-bytes", a, "3",
		"--", "read-bytes", a, "100",
		"--", "ready",
	}, &out)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		a + " " + sum("hello"),
		dir + "/missing MISSING",
		a + "/under-file MISSING",
		dir + " DIR",
		fmt.Sprintf("wrote %q", dir+"/new file"),
		fmt.Sprintf("%q %s", dir+"/new file", sum("x")),
		a + " 3",
		a + " 5",
		"ready",
	}, "\n") + "\n"
	if out.String() != want {
		t.Errorf("output:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestFailures(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		nil, {"bogus"}, {"write", "x"}, {"ready", "x"}, {"ready", "--"}, {"--", "ready"},
		{"read-bytes", "x", "-1"}, {"read-bytes", "x", "many"}, {"sha256"},
	} {
		var out bytes.Buffer
		err := run(args, &out)
		var usage usageError
		if !errors.As(err, &usage) || out.Len() != 0 {
			t.Errorf("run %q: err %v, output %q; want a usage error and no output", args, err, out.String())
		}
	}
	var out bytes.Buffer
	err := run([]string{"ready", "--", "read-bytes", filepath.Join(dir, "none"), "1", "--", "ready"}, &out)
	if err == nil || !strings.HasPrefix(out.String(), "ready\n"+dir+"/none ERROR ") || strings.Count(out.String(), "ready") != 1 {
		t.Errorf("read of a missing file: err %v, output %q", err, out.String())
	}
}

func TestWalk(t *testing.T) {
	dir := t.TempDir()
	mtime := time.Unix(1700000000, 0)
	mustDo := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mustDo(os.Mkdir(filepath.Join(dir, "d"), 0o755))
	mustDo(os.WriteFile(filepath.Join(dir, "d/b"), []byte("bee"), 0o644))
	mustDo(os.WriteFile(filepath.Join(dir, "d.txt"), nil, 0o600))
	mustDo(unix.Chmod(filepath.Join(dir, "d.txt"), 0o4755))
	mustDo(os.Symlink("d/b", filepath.Join(dir, "l")))
	mustDo(unix.Mkfifo(filepath.Join(dir, "p"), 0o640))
	mustDo(os.Mkdir(filepath.Join(dir, "skip"), 0o700))
	mustDo(os.WriteFile(filepath.Join(dir, "skip/x"), nil, 0o644))
	ln, err := net.Listen("unix", filepath.Join(dir, "s"))
	mustDo(err)
	defer ln.Close()
	for _, p := range []string{"d/b", "d.txt", "p", "s", "d", "skip"} {
		mustDo(os.Chtimes(filepath.Join(dir, p), mtime, mtime))
	}
	xattr := "-"
	if err := unix.Setxattr(filepath.Join(dir, "d/b"), "user.test", []byte("v\x00"), 0); err == nil {
		xattr = "user.test=dgA="
	} else {
		t.Logf("no user xattrs on %s (%v): checking the walk without them", dir, err)
	}

	var out bytes.Buffer
	mustDo(walk(&out, dir+"/", []string{filepath.Join(dir, "skip")}))
	uid, gid := os.Getuid(), os.Getgid()
	lmtime := mustLstatMtime(t, filepath.Join(dir, "l"))
	want := strings.Join([]string{
		fmt.Sprintf("%s/d d 0755 %d %d 0 1700000000 - - - -", dir, uid, gid),
		fmt.Sprintf("%s/d.txt f 4755 %d %d 0 1700000000 - - - %s", dir, uid, gid, sum("")),
		fmt.Sprintf("%s/d/b f 0644 %d %d 3 1700000000 - - %s %s", dir, uid, gid, xattr, sum("bee")),
		fmt.Sprintf("%s/l l 0777 %d %d 0 %d - d/b - -", dir, uid, gid, lmtime),
		fmt.Sprintf("%s/p p 0640 %d %d 0 1700000000 - - - -", dir, uid, gid),
		fmt.Sprintf("%s/s s %04o %d %d 0 1700000000 - - - -", dir, mustLstatMode(t, filepath.Join(dir, "s")), uid, gid),
		"walk-done 6",
	}, "\n") + "\n"
	if out.String() != want {
		t.Errorf("walk output:\n%s\nwant:\n%s", out.String(), want)
	}

	if err := walk(&out, filepath.Join(dir, "none"), nil); err == nil {
		t.Error("walking a missing root succeeded")
	}
}

func TestDevice(t *testing.T) {
	var out bytes.Buffer
	if err := walk(&out, "/dev", []string{"/dev/shm", "/dev/mqueue"}); err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "/dev/null ") {
			if !strings.HasPrefix(l, "/dev/null c ") || !strings.HasSuffix(l, " 1:3 - - -") {
				t.Errorf("/dev/null line %q, want a character device 1:3", l)
			}
			return
		}
	}
	t.Errorf("no /dev/null in:\n%s", out.String())
}

func mustLstatMtime(t *testing.T, p string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Mtim.Sec)
}

func mustLstatMode(t *testing.T, p string) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Mode & 0o7777
}
