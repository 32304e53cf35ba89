package index

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck/tarchecktest"
)

// synthZTOC returns a real zTOC (gzip, spans of spanSize over a layer of
// about layerSize bytes) whose file table is replaced by files: the shape
// of a zTOC built by anyone, which Convert accepts.
func synthZTOC(t testing.TB, layerSize int, spanSize int64, files []ztoc.FileMetadata) []byte {
	t.Helper()
	blob := gzipMembers(t, buildTar(t, testEntries(layerSize)))
	z, _ := tarchecktest.BuildZTOC(t, blob, spanSize, compression.Gzip)
	z.FileMetadata = files
	r, _, err := ztoc.Marshal(z)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// synthFiles returns n empty regular files in directories of perDir, with
// names padded to nameLen bytes and xattrs extended attributes each.
func synthFiles(n, perDir, nameLen, xattrs int) []ztoc.FileMetadata {
	files := make([]ztoc.FileMetadata, n)
	for i := range files {
		name := fmt.Sprintf("d%05d/f%07d", i/perDir, i)
		if pad := nameLen - len(name); pad > 0 {
			name += strings.Repeat("x", min(pad, 200))
			for pad -= 200; pad > 0; pad -= 200 {
				name = fmt.Sprintf("d%05d/%s/%s", i/perDir, strings.Repeat("y", min(pad, 200)), name[len("d00000/"):])
			}
		}
		f := ztoc.FileMetadata{Name: name, Type: "reg", Mode: 0o644, Uname: "root", Gname: "root", ModTime: testTime}
		if xattrs > 0 {
			f.PAXHeaders = map[string]string{}
			for j := range xattrs {
				f.PAXHeaders[fmt.Sprintf("SCHILY.xattr.user.k%02d", j)] = fmt.Sprintf("value %d of %d", j, i)
			}
		}
		files[i] = f
	}
	return files
}

// bigXattrFiles is n files, 100 to a directory, each with xattrs extended
// attributes of valueLen bytes (the integration suite's largest shape).
func bigXattrFiles(n, xattrs, valueLen int) []ztoc.FileMetadata {
	value := strings.Repeat("v", valueLen-8)
	files := make([]ztoc.FileMetadata, n)
	for i := range files {
		pax := make(map[string]string, xattrs)
		for j := range xattrs {
			pax[fmt.Sprintf("SCHILY.xattr.user.k%d", j)] = fmt.Sprintf("%08d", i) + value
		}
		files[i] = ztoc.FileMetadata{Name: fmt.Sprintf("d%04d/%06d", i/100, i), Type: "reg", Mode: 0o644,
			ModTime: testTime, PAXHeaders: pax}
	}
	return files
}

// deepFiles is a chain of depth directories with a file at the bottom.
func deepFiles(depth int) []ztoc.FileMetadata {
	var files []ztoc.FileMetadata
	name := ""
	for i := range depth {
		name += fmt.Sprintf("%d/", i%10)
		files = append(files, ztoc.FileMetadata{Name: name, Type: "dir", Mode: 0o755, ModTime: testTime})
	}
	return append(files, ztoc.FileMetadata{Name: name + "f", Type: "reg", Mode: 0o644, ModTime: testTime})
}

// loadAllocs decodes, converts and loads data and builds its tree, as a
// mount does, and returns the bytes the Go heap allocated meanwhile.
func loadAllocs(t testing.TB, data []byte) uint64 {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	l, err := ParseZTOC(data, Limits{MaxZTOCHeapBytes: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	root, err := layer.NewRoot(l.TOC, nopReader{}, layer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(root)
	l.Close()
	return after.TotalAlloc - before.TotalAlloc
}

// TestHeapEstimate: for zTOCs of several shapes (many entries, long names,
// many xattrs, a deep chain, many checkpoints) the estimate checkFlatbuffer
// compares with limits.max_ztoc_heap_bytes is at least what loading the
// zTOC allocates on the Go heap (plus the store's copy of the blob), and
// not wildly more.
func TestHeapEstimate(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("builds zTOCs of tens of MiB of heap; the race detector's own allocations would count")
	}
	cases := []struct {
		name string
		data func() []byte
	}{
		{"100k short names", func() []byte { return synthZTOC(t, 64<<10, 1<<20, synthFiles(100_000, 100, 0, 0)) }},
		{"5k long names", func() []byte { return synthZTOC(t, 64<<10, 1<<20, synthFiles(5_000, 1000, 3000, 0)) }},
		{"10k files with 16 xattrs", func() []byte { return synthZTOC(t, 64<<10, 1<<20, synthFiles(10_000, 50, 0, 16)) }},
		{"one file per directory", func() []byte { return synthZTOC(t, 64<<10, 1<<20, synthFiles(50_000, 1, 0, 0)) }},
		{"1000 files with 4 xattrs of 4000 bytes", func() []byte { return synthZTOC(t, 64<<10, 1<<20, bigXattrFiles(1000, 4, 4000)) }},
		{"1000 deep", func() []byte { return synthZTOC(t, 64<<10, 1<<20, deepFiles(1000)) }},
		{"256 checkpoints", func() []byte { return synthZTOC(t, 8<<20, 32<<10, synthFiles(100, 10, 0, 0)) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.data()
			est, err := checkFlatbuffer(data, Limits{}.withDefaults())
			if err != nil {
				t.Fatal(err)
			}
			// The store's own copy of the blob is made before loadAllocs.
			got := loadAllocs(t, data) + uint64(len(data))
			t.Logf("%d-byte zTOC: estimated %d bytes, allocated %d (%.2fx)", len(data), est, got, float64(est)/float64(got))
			if uint64(est) < got {
				t.Errorf("estimate %d bytes is below the %d bytes allocated", est, got)
			}
			if uint64(est) > 6*got {
				t.Errorf("estimate %d bytes is more than 6x the %d bytes allocated", est, got)
			}
		})
	}
}

// BenchmarkZTOCHeapBound loads a zTOC whose estimated heap is a quarter of
// the default limits.max_ztoc_heap_bytes (short names, one directory per
// 100 files: the most entries per byte of estimate), and reports the bytes
// allocated and retained, against the estimate.
func BenchmarkZTOCHeapBound(b *testing.B) {
	target := int64(DefaultMaxZTOCHeapBytes / 4)
	n := int(target / (entryHeap + 100))
	data := synthZTOC(b, 64<<10, 1<<20, synthFiles(n, 100, 0, 0))
	est, err := checkFlatbuffer(data, Limits{MaxZTOCHeapBytes: 1 << 40}.withDefaults())
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		l, err := ParseZTOC(data, Limits{})
		if err != nil {
			b.Fatal(err)
		}
		root, err := layer.NewRoot(l.TOC, nopReader{}, layer.Options{})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(root)
		l.Close()
		b.ReportMetric(float64(est), "estB")
		b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc), "allocB")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc), "liveB")
		b.ReportMetric(float64(len(data)), "ztocB")
		b.ReportMetric(float64(n), "entries")
	}
}
