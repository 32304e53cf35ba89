package layer

import (
	"fmt"
	"runtime"
	"testing"
)

// benchTOC returns n entries shaped like a real layer: directories of 100
// entries (the directory, 98 files, a symlink) three levels deep, every
// name a distinct string as a decoded zTOC would hold.
func benchTOC(n int) TOC {
	entries := make([]Entry, 0, n)
	var off int64
	for d := 0; len(entries) < n; d++ {
		dir := fmt.Sprintf("usr/share/pkg%04d", d)
		entries = append(entries, Entry{Name: dir, Type: TypeDir, Mode: 0o755, ModTime: testTime})
		for f := 0; f < 98 && len(entries) < n; f++ {
			size := int64(f * 100)
			entries = append(entries, Entry{Name: fmt.Sprintf("%s/file%03d.txt", dir, f), Type: TypeReg,
				Offset: off + 512, Size: size, Mode: 0o644, ModTime: testTime})
			off += 512 + (size+511)/512*512
		}
		if len(entries) < n {
			entries = append(entries, Entry{Name: dir + "/link", Type: TypeSymlink,
				Linkname: "file000.txt", Mode: 0o777, ModTime: testTime})
		}
	}
	return TOC{Entries: entries}
}

// BenchmarkNewRoot100k builds the tree of 100,000 entries and reports the
// heap it keeps per entry (the TOC itself excluded).
func BenchmarkNewRoot100k(b *testing.B) {
	const n = 100_000
	toc := benchTOC(n)
	perEntry := heapPerEntry(b, toc)
	b.Logf("tree of %d entries keeps %.1f heap bytes per entry", n, perEntry)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewRoot(toc, &memReader{}, Options{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(perEntry, "heapB/entry")
}

// heapPerEntry measures the live heap a built tree adds, per TOC entry.
func heapPerEntry(b *testing.B, toc TOC) float64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	root, err := NewRoot(toc, &memReader{}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(root)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(len(toc.Entries))
}
