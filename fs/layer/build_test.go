package layer

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
)

func TestNewRootRejects(t *testing.T) {
	reg := func(name string) Entry { return Entry{Name: name, Type: TypeReg} }
	cases := map[string][]Entry{
		"empty name":             {reg("")},
		"dot-dot component":      {reg("a/../b")},
		"leading dot-dot":        {reg("../etc/passwd")},
		"absolute":               {reg("/etc/passwd")},
		"trailing slash":         {reg("a/")},
		"double slash":           {reg("a//b")},
		"dot component":          {reg("a/./b")},
		"NUL byte":               {reg("a\x00b")},
		"component too long":     {reg(strings.Repeat("x", 256))},
		"unknown type":           {{Name: "a", Type: 99}},
		"negative size":          {{Name: "a", Type: TypeReg, Size: -1}},
		"negative uid":           {{Name: "a", Type: TypeReg, UID: -1}},
		"empty symlink":          {{Name: "a", Type: TypeSymlink}},
		"hardlink to nothing":    {{Name: "a", Type: TypeHardlink, Linkname: "b"}},
		"hardlink with dot-dot":  {reg("b"), {Name: "a", Type: TypeHardlink, Linkname: "../b"}},
		"hardlink to directory":  {{Name: "d", Type: TypeDir}, {Name: "a", Type: TypeHardlink, Linkname: "d"}},
		"parent is a file":       {reg("a"), reg("a/b")},
		"parent is a symlink":    {{Name: "a", Type: TypeSymlink, Linkname: "/"}, reg("a/b")},
		"parent was whited out":  {{Name: "a", Type: TypeDir}, reg(".wh.a"), reg("a/b")},
		"bare whiteout prefix":   {reg("d/.wh.")},
		"whiteout of dot-dot":    {reg("d/.wh...")},
		"whiteout of dot":        {reg(".wh..")},
		"hardlink through file":  {reg("f"), {Name: "a", Type: TypeHardlink, Linkname: "f/x"}},
		"replaced parent cached": {reg("a/b/c"), reg("a"), reg("a/b/d")},
	}
	for name, entries := range cases {
		_, err := NewRoot(TOC{Entries: entries}, &memReader{}, Options{})
		if err == nil {
			t.Errorf("%s: NewRoot accepted %+v", name, entries)
			continue
		}
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v is not an invalid-argument error", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
}

func TestNewRootAccepts(t *testing.T) {
	entries := []Entry{
		{Name: ".", Type: TypeDir, Mode: 0o700}, // ignored, like containerd
		{Name: "..foo", Type: TypeReg},
		{Name: "a..b/c...", Type: TypeReg},
		{Name: "ünïcødé/日本語", Type: TypeReg},
	}
	root, err := NewRoot(TOC{Entries: entries}, &memReader{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	n := root.(*inode).n
	if n.mode != syscall.S_IFDIR|0o755 {
		t.Errorf("root mode %o", n.mode)
	}
	for _, p := range []string{"..foo", "a..b/c...", "ünïcødé/日本語"} {
		b := &builder{root: n}
		if _, err := b.lookup(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// TestLinkCounts checks nlink and Statfs accounting through replacements.
func TestLinkCounts(t *testing.T) {
	b := newBuilder(0, 0)
	entries := []Entry{
		{Name: "d/f", Type: TypeReg, Size: 5000},
		{Name: "l1", Type: TypeHardlink, Linkname: "d/f"},
		{Name: "l2", Type: TypeHardlink, Linkname: "d/f"},
		{Name: "d", Type: TypeReg}, // drops d/f: one name fewer
		{Name: "l2", Type: TypeDir},
		{Name: "l2/sub", Type: TypeDir},
	}
	if err := b.build(entries); err != nil {
		t.Fatal(err)
	}
	l1, _ := b.lookup("l1")
	if l1.nlinks() != 1 {
		t.Errorf("l1 nlink %d, want 1", l1.nlinks())
	}
	if l2, _ := b.lookup("l2"); l2.nlinks() != 3 {
		t.Errorf("l2 nlink %d, want 3", l2.nlinks())
	}
	if b.root.nlinks() != 3 {
		t.Errorf("root nlink %d, want 3", b.root.nlinks())
	}
	// root, d (file), l1 (the old d/f), l2, l2/sub
	if b.files != 5 || b.blocks != 2 {
		t.Errorf("files %d blocks %d, want 5 and 2", b.files, b.blocks)
	}
}

// TestScale mounts a directory with 10,000 entries, a 120-level path and
// Unicode names.
func TestScale(t *testing.T) {
	var b tocBuilder
	const wide = 10000
	for i := range wide {
		b.file(fmt.Sprintf("wide/f%05d", i), fmt.Sprint(i))
	}
	deep := strings.TrimSuffix(strings.Repeat("d/", 120), "/")
	b.file(deep+"/leaf", "bottom")
	unicode := []string{"ünïcødé/日本語.txt", "emoji/😀 smile", "ελληνικά/αρχείο"}
	for _, u := range unicode {
		b.file(u, u)
	}
	mnt := b.mount(t, Options{})

	names := readDirNames(t, filepath.Join(mnt, "wide"))
	if len(names) != wide || names[0] != "f00000" || names[wide-1] != fmt.Sprintf("f%05d", wide-1) {
		t.Errorf("wide lists %d names", len(names))
	}
	for _, i := range []int{0, 4321, wide - 1} {
		got, err := os.ReadFile(filepath.Join(mnt, fmt.Sprintf("wide/f%05d", i)))
		if err != nil || string(got) != fmt.Sprint(i) {
			t.Errorf("f%05d = %q, %v", i, got, err)
		}
	}
	if got, err := os.ReadFile(filepath.Join(mnt, deep, "leaf")); err != nil || string(got) != "bottom" {
		t.Errorf("deep leaf = %q, %v", got, err)
	}
	for _, u := range unicode {
		if got, err := os.ReadFile(filepath.Join(mnt, u)); err != nil || string(got) != u {
			t.Errorf("%s = %q, %v", u, got, err)
		}
		if !slices.Contains(readDirNames(t, filepath.Join(mnt, path.Dir(u))), path.Base(u)) {
			t.Errorf("%s not listed", u)
		}
	}
}

// TestConcurrentReads reads files from many goroutines (run with -race).
func TestConcurrentReads(t *testing.T) {
	var b tocBuilder
	const files = 16
	content := func(i int) string { return strings.Repeat(fmt.Sprint(i%10), 64<<10+i) }
	for i := range files {
		b.file(fmt.Sprintf("dir%d/file%d", i%4, i), content(i))
	}
	mnt := b.mount(t, Options{})
	var wg sync.WaitGroup
	errs := make(chan error, files*8)
	for i := range files * 4 {
		wg.Go(func() {
			name := fmt.Sprintf("dir%d/file%d", i%4, i%files)
			got, err := os.ReadFile(filepath.Join(mnt, name))
			if err != nil || string(got) != content(i%files) {
				errs <- fmt.Errorf("%s: %d bytes, %v", name, len(got), err)
			}
			if _, err := os.ReadDir(filepath.Join(mnt, path.Dir(name))); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if b.r.calls.Load() == 0 {
		t.Error("no reads reached the Reader")
	}
}
