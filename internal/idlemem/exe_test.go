package idlemem

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// smapsEntry is one mapping of a smaps text with the fields exeMappings reads.
func smapsEntry(header string, rssKB, anonKB int) string {
	return header + "\n" +
		"Size:              64 kB\n" +
		"Rss:               " + itoa(rssKB) + " kB\n" +
		"Pss:               " + itoa(rssKB) + " kB\n" +
		"Anonymous:         " + itoa(anonKB) + " kB\n" +
		"VmFlags: rd mr mw me\n"
}

func itoa(n int) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
		if n == 0 {
			return string(b)
		}
	}
}

func TestExeMappings(t *testing.T) {
	exe := fileID{major: 0xfe, minor: 0x1a2, inode: 4242}
	smaps := strings.Join([]string{
		smapsEntry("00400000-00402000 r--p 00000000 fe:1a2 4242   /usr/bin/soci-snapshotter-grpc", 8, 0),
		smapsEntry("00402000-01136000 r-xp 00002000 fe:1a2 4242   /usr/bin/soci-snapshotter-grpc", 10240, 0),
		smapsEntry("01136000-02084000 r--p 00d36000 fe:1a2 4242   /usr/bin/soci-snapshotter-grpc", 9000, 0),
		// RELRO: relocated by the dynamic linker, then made read-only.
		smapsEntry("02084000-02085000 r--p 01c83000 fe:1a2 4242   /usr/bin/soci-snapshotter-grpc", 4, 4),
		smapsEntry("02085000-0212c000 rw-p 01c84000 fe:1a2 4242   /usr/bin/soci-snapshotter-grpc", 496, 168),
		smapsEntry("0212c000-0417b000 rw-p 00000000 00:00 0 ", 144, 144),
		// Nothing resident: nothing to do.
		smapsEntry("05000000-05001000 r--p 01d00000 fe:1a2 4242   /usr/bin/soci-snapshotter-grpc", 0, 0),
		// Shared mapping of the same file, another file, another device.
		smapsEntry("7f0000000000-7f0000010000 r--s 00000000 fe:1a2 4242   /usr/bin/soci-snapshotter-grpc", 64, 0),
		smapsEntry("7f0000010000-7f0000020000 r-xp 00000000 fe:1a2 77   /usr/lib/libc.so.6", 64, 0),
		smapsEntry("7f0000020000-7f0000030000 r-xp 00000000 fe:01 4242   /other/fs/file", 64, 0),
		// The executable replaced on disk (an upgrade): same inode, path suffixed.
		smapsEntry("7f0000030000-7f0000040000 r-xp 00000000 fe:1a2 4242   /usr/bin/soci-snapshotter-grpc (deleted)", 12, 0),
	}, "")
	got, err := fileMappings(strings.NewReader(smaps), exe)
	if err != nil {
		t.Fatal(err)
	}
	want := []mapping{
		{0x00400000, 0x00402000, 8 << 10},
		{0x00402000, 0x01136000, 10240 << 10},
		{0x01136000, 0x02084000, 9000 << 10},
		{0x7f0000030000, 0x7f0000040000, 12 << 10},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d mappings %#v, want %#v", len(got), got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mapping %d: got %#v, want %#v", i, got[i], want[i])
		}
	}
}

// TestExeMappingsMissingAnonymous: a mapping whose Anonymous line is
// missing is not known to be free of copies and is left alone.
func TestExeMappingsMissingAnonymous(t *testing.T) {
	exe := fileID{major: 8, minor: 1, inode: 9}
	smaps := "00402000-01136000 r-xp 00002000 08:01 9 /bin/x\nRss: 100 kB\nVmFlags: rd ex\n"
	got, err := fileMappings(strings.NewReader(smaps), exe)
	if err != nil || len(got) != 0 {
		t.Fatalf("got %#v, %v; want none", got, err)
	}
}

func TestExeMappingsMalformed(t *testing.T) {
	exe := fileID{major: 8, minor: 1, inode: 9}
	for _, smaps := range []string{
		"00402000 r-xp 00002000 08:01 9 /bin/x\n",
		"01136000-00402000 r-xp 00002000 08:01 9 /bin/x\n",
		"00402000-01136000 r-xp 00002000 0801 9 /bin/x\n",
		"00402000-01136000 r-xp 00002000 08:01 x9 /bin/x\n",
		"00402000-01136000 r-xp 00002000 08:01\n",
		"00402000-01136000 r-xp 00002000 08:01 9 /bin/x\nRss: -4 kB\n",
		"00402000-01136000 r-xp 00002000 08:01 9 /bin/x\nAnonymous: many kB\n",
	} {
		if got, err := fileMappings(strings.NewReader(smaps), exe); err == nil {
			t.Errorf("%q: got %#v, want an error", smaps, got)
		}
	}
}

// TestReleaseFile maps a file twice, privately and read-only: one mapping
// only read, the other written first (copies of its pages, as the dynamic
// linker leaves RELRO) and then made read-only. A release unmaps every page
// of the first, whose bytes read back from the page cache, and leaves the
// second, whose bytes are not the file's, alone.
func TestReleaseFile(t *testing.T) {
	const size = 1 << 20
	content := make([]byte, size)
	for i := range content {
		content[i] = byte(i * 7)
	}
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	id := fileID{major: unix.Major(st.Dev), minor: unix.Minor(st.Dev), inode: st.Ino}
	clean, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(clean)
	copied, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(copied)
	copied[0], copied[size-1] = 0xAA, 0xBB
	if err := syscall.Mprotect(copied, syscall.PROT_READ); err != nil {
		t.Fatal(err)
	}
	// Fault every page of both in.
	if !bytes.Equal(clean, content) || !bytes.Equal(copied[1:size-1], content[1:size-1]) {
		t.Fatal("the mappings do not read the file")
	}
	if rss := mappingRSS(t, clean); rss != size {
		t.Fatalf("read-only mapping: %d bytes resident before the release, want %d", rss, size)
	}
	copiedRSS := mappingRSS(t, copied)

	released, err := releaseFile(id)
	if err != nil {
		t.Fatal(err)
	}
	if released != size {
		t.Errorf("released %d bytes, want %d (the read-only mapping only)", released, size)
	}
	if rss := mappingRSS(t, clean); rss != 0 {
		t.Errorf("read-only mapping: %d bytes resident after the release, want 0", rss)
	}
	if rss := mappingRSS(t, copied); rss != copiedRSS {
		t.Errorf("written mapping: %d bytes resident after the release, want %d as before", rss, copiedRSS)
	}
	if !bytes.Equal(clean, content) {
		t.Error("the released mapping does not read back the file")
	}
	if copied[0] != 0xAA || copied[size-1] != 0xBB || !bytes.Equal(copied[1:size-1], content[1:size-1]) {
		t.Error("the written mapping lost its bytes")
	}
}

// TestReleaseExecutable releases the test binary's own pages: no error,
// some bytes released, and the process goes on running (its code comes
// back from the page cache).
func TestReleaseExecutable(t *testing.T) {
	released, err := ReleaseExecutable()
	if err != nil {
		t.Fatal(err)
	}
	if released <= 0 {
		t.Fatalf("released %d bytes of a running executable", released)
	}
	if _, err := ReleaseExecutable(); err != nil {
		t.Fatalf("second release: %v", err)
	}
}

// mappingRSS is the resident bytes of the mapping that starts at b.
func mappingRSS(t *testing.T, b []byte) int64 {
	t.Helper()
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	start := fmt.Sprintf("%x-", uintptr(unsafe.Pointer(&b[0])))
	in := false
	for _, line := range strings.Split(string(smaps), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && !strings.HasSuffix(f[0], ":"):
			in = strings.HasPrefix(f[0], start)
		case in && len(f) >= 2 && f[0] == "Rss:":
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no mapping at %s in smaps", start)
	return 0
}
