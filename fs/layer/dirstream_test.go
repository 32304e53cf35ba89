package layer

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDirStreamSeek(t *testing.T) {
	n := &node{}
	d := &dirStream{list: []dirent{{"a", n}, {"b", n}, {"c", n}}, self: 5, parent: 1}
	ctx := context.Background()
	var names []string
	for e, _ := d.Readdirent(ctx); e != nil; e, _ = d.Readdirent(ctx) {
		names = append(names, fmt.Sprintf("%s@%d", e.Name, e.Off))
	}
	if strings.Join(names, " ") != ".@1 ..@2 a@3 b@4 c@5" {
		t.Errorf("stream %v", names)
	}
	if errno := d.Seekdir(ctx, 3); errno != 0 {
		t.Fatal(errno)
	}
	if e, _ := d.Readdirent(ctx); e == nil || e.Name != "b" {
		t.Errorf("after seek to 3: %v", e)
	}
	if errno := d.Seekdir(ctx, 9); errno != syscall.EINVAL {
		t.Errorf("seek past the end: %v", errno)
	}
}

// rawDirents lists a directory with getdents64, "." and ".." included,
// as name -> inode number.
func rawDirents(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ents := map[string]uint64{}
	buf := make([]byte, 4096)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return ents
		}
		for b := buf[:n]; len(b) > 0; {
			reclen := binary.NativeEndian.Uint16(b[16:18])
			name, _, _ := strings.Cut(string(b[19:reclen]), "\x00")
			ents[name] = binary.NativeEndian.Uint64(b[0:8])
			b = b[reclen:]
		}
	}
}

func TestDotEntries(t *testing.T) {
	var b tocBuilder
	b.file("a/b/f", "x")
	mnt := b.mount(t, Options{})
	ino := func(p string) uint64 {
		fi, err := os.Lstat(filepath.Join(mnt, p))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	got := rawDirents(t, filepath.Join(mnt, "a/b"))
	want := map[string]uint64{".": ino("a/b"), "..": ino("a"), "f": ino("a/b/f")}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("a/b lists %v, want %v", got, want)
	}
	if got := rawDirents(t, mnt); got["."] != rootIno || got[".."] != rootIno || got["a"] != ino("a") {
		t.Errorf("root lists %v", got)
	}
}
