package idlemem

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// The executable's pages. A process maps its executable privately and
// read-only (code, read-only data, the pc tables the runtime reads to
// unwind stacks), and the kernel maps file pages around each fault and
// whole folios of what readahead brought in. So a process that ran through
// start-up, package inits and a burst of calls keeps most of the file
// mapped (about 23 MiB of a 43 MB build) although at rest it runs a few MiB
// of it. Those pages are copies of the file: dropping the mapping loses
// nothing, the pages stay in the page cache (unmapped, so the first the
// kernel reclaims) and a later access maps them again with a minor fault.

// ReleaseExecutable unmaps this process's resident pages of its executable's
// read-only private mappings (madvise MADV_DONTNEED), the pages a later
// access faults back in from the page cache, and returns how many bytes were
// resident in the mappings it released. A mapping that holds a private
// copy of a page (Anonymous in smaps: the relocations of RELRO, a
// debugger's breakpoint) is left alone, since MADV_DONTNEED would discard
// that copy.
func ReleaseExecutable() (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/exe", &st); err != nil {
		return 0, fmt.Errorf("stat the executable: %w", err)
	}
	return releaseFile(fileID{major: unix.Major(st.Dev), minor: unix.Minor(st.Dev), inode: st.Ino})
}

// releaseFile unmaps the resident pages of this process's read-only
// private mappings of the file id that hold no private copies.
func releaseFile(id fileID) (int64, error) {
	smaps, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, fmt.Errorf("open smaps: %w", err)
	}
	ms, err := fileMappings(smaps, id)
	smaps.Close()
	if err != nil {
		return 0, err
	}
	var released int64
	for _, m := range ms {
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, m.start, m.end-m.start, unix.MADV_DONTNEED); errno != 0 {
			return released, fmt.Errorf("madvise %#x-%#x: %w", m.start, m.end, errno)
		}
		released += m.rss
	}
	return released, nil
}

// fileID names a file as /proc/PID/maps does: device and inode.
type fileID struct {
	major, minor uint32
	inode        uint64
}

// mapping is one releasable mapping: [start, end) and its resident bytes.
type mapping struct {
	start, end uintptr
	rss        int64
}

// fileMappings returns the mappings of a /proc/PID/smaps text that map the
// file privately, readable and not writable (r-xp, r--p), with pages
// resident and none of them anonymous (copied). It reads line by line and
// allocates little: a process at rest is what it runs in.
func fileMappings(smaps io.Reader, file fileID) ([]mapping, error) {
	var out []mapping
	var cur *mapping // the mapping whose fields are being read, if a candidate
	var anon, rss int64 = -1, -1
	flush := func() {
		if cur != nil && anon == 0 && rss > 0 {
			cur.rss = rss
			out = append(out, *cur)
		}
		cur, anon, rss = nil, -1, -1
	}
	sc := bufio.NewScanner(smaps)
	sc.Buffer(make([]byte, 0, 4096), 2*4096+256) // a header holds a path of up to PATH_MAX
	for sc.Scan() {
		line := sc.Bytes()
		first := line
		if i := bytes.IndexAny(line, " \t"); i >= 0 {
			first = line[:i]
		}
		if len(first) == 0 {
			continue
		}
		if key, ok := bytes.CutSuffix(first, []byte(":")); ok {
			if cur == nil || !(string(key) == "Rss" || string(key) == "Anonymous") {
				continue
			}
			v, _, _ := bytes.Cut(bytes.TrimLeft(line[len(first):], " \t"), []byte(" "))
			kb, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil || kb < 0 {
				return nil, fmt.Errorf("smaps line %q: %w", line, errors.Join(err, errors.New("bad size")))
			}
			if string(key) == "Rss" {
				rss = kb << 10
			} else {
				anon = kb << 10
			}
			continue
		}
		// A mapping's header: address perms offset dev inode [path].
		flush()
		f := bytes.Fields(line)
		if len(f) < 5 {
			return nil, fmt.Errorf("smaps line %q: too few fields", line)
		}
		start, end, err := parseRange(f[0])
		if err != nil {
			return nil, fmt.Errorf("smaps line %q: %w", line, err)
		}
		dev, err := parseDev(f[3])
		if err != nil {
			return nil, fmt.Errorf("smaps line %q: %w", line, err)
		}
		inode, err := strconv.ParseUint(string(f[4]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("smaps line %q: inode: %w", line, err)
		}
		perms := string(f[1])
		if len(perms) == 4 && perms[0] == 'r' && perms[1] == '-' && perms[3] == 'p' &&
			(fileID{dev.major, dev.minor, inode}) == file {
			cur = &mapping{start: start, end: end}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read smaps: %w", err)
	}
	flush()
	return out, nil
}

func parseRange(b []byte) (start, end uintptr, err error) {
	lo, hi, ok := bytes.Cut(b, []byte("-"))
	if !ok {
		return 0, 0, errors.New("no address range")
	}
	s, err1 := strconv.ParseUint(string(lo), 16, 64)
	e, err2 := strconv.ParseUint(string(hi), 16, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("address range: %w", err)
	}
	if e <= s {
		return 0, 0, errors.New("empty address range")
	}
	return uintptr(s), uintptr(e), nil
}

func parseDev(b []byte) (fileID, error) {
	maj, mnr, ok := bytes.Cut(b, []byte(":"))
	if !ok {
		return fileID{}, errors.New("device: no major:minor")
	}
	a, err1 := strconv.ParseUint(string(maj), 16, 32)
	c, err2 := strconv.ParseUint(string(mnr), 16, 32)
	if err := errors.Join(err1, err2); err != nil {
		return fileID{}, fmt.Errorf("device: %w", err)
	}
	return fileID{major: uint32(a), minor: uint32(c)}, nil
}
