package harness

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
)

// A pagemap entry (/proc/PID/pagemap, one little-endian uint64 per virtual
// page, Documentation/admin-guide/mm/pagemap.rst): bit 63 says the page is
// present in RAM, bit 62 that it is swapped; when present, bits 0-54 are
// its page frame number, shown only to CAP_SYS_ADMIN (0 otherwise).
const (
	pagemapPresent = 1 << 63
	pagemapSwapped = 1 << 62
	pagemapPFNMask = 1<<55 - 1
)

// ErrPFNHidden is returned when pagemap shows present pages without their
// frame numbers (the reader lacks CAP_SYS_ADMIN): they cannot be told apart.
var ErrPFNHidden = errors.New("pagemap hides page frame numbers (needs CAP_SYS_ADMIN)")

// pagemapPFN decodes one entry: the frame number of a page present in RAM.
// A swapped or absent page is not resident and gives ok false.
func pagemapPFN(entry uint64) (pfn uint64, ok bool) {
	if entry&pagemapPresent == 0 || entry&pagemapSwapped != 0 {
		return 0, false
	}
	return entry & pagemapPFNMask, true
}

// vmRange is one mapping of /proc/PID/maps, [start, end) in bytes.
type vmRange struct{ start, end uint64 }

// parseMaps returns the mappings of a /proc/PID/maps text that can hold
// resident pages: those with some access allowed. A PROT_NONE mapping
// ("---p": the Go heap's reserved arenas, guard pages) cannot be touched,
// so it has none, and reading its pagemap would only cost time.
func parseMaps(text []byte) ([]vmRange, error) {
	var out []vmRange
	for len(text) > 0 {
		line := text
		if i := bytes.IndexByte(text, '\n'); i >= 0 {
			line, text = text[:i], text[i+1:]
		} else {
			text = nil
		}
		if len(line) == 0 {
			continue
		}
		f := bytes.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("maps line %q: too few fields", line)
		}
		addr, perms := f[0], f[1]
		dash := bytes.IndexByte(addr, '-')
		if dash < 0 {
			return nil, fmt.Errorf("maps line %q: no address range", line)
		}
		start, err1 := strconv.ParseUint(string(addr[:dash]), 16, 64)
		end, err2 := strconv.ParseUint(string(addr[dash+1:]), 16, 64)
		if err := errors.Join(err1, err2); err != nil || end < start {
			return nil, fmt.Errorf("maps line %q: address range: %v", line, err)
		}
		if len(perms) < 3 || bytes.Equal(perms[:3], []byte("---")) {
			continue
		}
		if len(f) >= 6 && string(f[5]) == "[vsyscall]" {
			continue // above the user address space: pagemap cannot read it
		}
		out = append(out, vmRange{start, end})
	}
	return out, nil
}

// PageSet gathers the page frames resident in several processes at about
// one instant, so that a page mapped by several (the executable's text,
// shared by a daemon and its FUSE hosts) counts once. The zero value is
// ready; reuse it across samples to keep its buffers.
type PageSet struct {
	pfns []uint64
	buf  []byte
}

// Reset empties the set.
func (s *PageSet) Reset() { s.pfns = s.pfns[:0] }

// AddProcess adds the frames of every page resident in pid's address space
// (/proc/PID/maps and /proc/PID/pagemap), swapped and absent pages not
// included. It needs root (CAP_SYS_ADMIN) to see frame numbers.
func (s *PageSet) AddProcess(pid int) error {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return fmt.Errorf("read maps of pid %d: %w", pid, err)
	}
	ranges, err := parseMaps(maps)
	if err != nil {
		return fmt.Errorf("maps of pid %d: %w", pid, err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return fmt.Errorf("open pagemap of pid %d: %w", pid, err)
	}
	defer f.Close()
	page := uint64(os.Getpagesize())
	if s.buf == nil {
		s.buf = make([]byte, 8*4096) // 16 MiB of address space per read
	}
	before := len(s.pfns)
	zeros := 0 // present entries with frame 0: hidden frame numbers
	for _, r := range ranges {
		for va := r.start; va < r.end; {
			n := min((r.end-va)/page*8, uint64(len(s.buf)))
			got, err := f.ReadAt(s.buf[:n], int64(va/page*8))
			if err != nil && !(errors.Is(err, io.EOF) && got > 0) {
				// The mapping went away since maps was read: a race with
				// munmap, not an error of the sample.
				break
			}
			zeros += s.addEntries(s.buf[:got])
			va += uint64(got/8) * page
			if got == 0 {
				break
			}
		}
	}
	if zeros > 0 && len(s.pfns) == before {
		return fmt.Errorf("pagemap of pid %d: %w", pid, ErrPFNHidden)
	}
	return nil
}

// addEntries adds the frames of the resident pages among pagemap entries
// and returns how many present entries showed frame 0 (hidden).
func (s *PageSet) addEntries(entries []byte) (zeros int) {
	for i := 0; i+8 <= len(entries); i += 8 {
		if pfn, ok := pagemapPFN(binary.LittleEndian.Uint64(entries[i:])); ok {
			if pfn == 0 {
				zeros++
				continue
			}
			s.pfns = append(s.pfns, pfn)
		}
	}
	return zeros
}

// Distinct is how many different page frames the set holds.
func (s *PageSet) Distinct() int {
	return countDistinct(s.pfns)
}

// countDistinct sorts pfns in place and counts its different values.
func countDistinct(pfns []uint64) int {
	slices.Sort(pfns)
	n := 0
	for i, p := range pfns {
		if i == 0 || p != pfns[i-1] {
			n++
		}
	}
	return n
}

// DistinctResidentBytes is the memory the processes hold together at about
// one instant: each resident page counted once however many of them map
// it. For one process it is its RSS (with the shared zero page, if mapped,
// counted once). Processes that cannot be read (exited) are skipped and
// returned in skipped.
func DistinctResidentBytes(set *PageSet, pids []int) (bytes int64, skipped []int, err error) {
	set.Reset()
	for _, pid := range pids {
		if err := set.AddProcess(pid); err != nil {
			if errors.Is(err, ErrPFNHidden) {
				return 0, nil, err
			}
			skipped = append(skipped, pid)
		}
	}
	return int64(set.Distinct()) * int64(os.Getpagesize()), skipped, nil
}
