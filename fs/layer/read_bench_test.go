package layer

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// benchFileSize is the size of the file the FUSE read benchmarks read:
// 512 MiB, or SOCI_BENCH_FILE_MB MiB.
func benchFileSize(b *testing.B) int64 {
	if v := os.Getenv("SOCI_BENCH_FILE_MB"); v != "" {
		mb, err := strconv.ParseInt(v, 10, 64)
		if err != nil || mb <= 0 {
			b.Fatalf("SOCI_BENCH_FILE_MB=%q", v)
		}
		return mb << 20
	}
	return 512 << 20
}

// mountBigFile mounts a layer with one file of size bytes served from memory
// (a warm span cache: no fetch, no inflate) and opens it.
func mountBigFile(b *testing.B, size int64) *os.File {
	b.Helper()
	var tb tocBuilder
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{1})
	_, _ = rng.Read(data)
	tb.dir("data")
	tb.file("data/big", string(data))
	data = nil
	mnt := tb.mount(b, Options{})
	f, err := os.Open(filepath.Join(mnt, "data/big"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}

// dropPages evicts the file's pages from the page cache, so that every read
// goes through FUSE to the layer again.
func dropPages(b *testing.B, f *os.File) {
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatalf("fadvise: %v", err)
	}
}

// BenchmarkFUSESequentialRead reads the whole file in 1 MiB reads, page
// cache dropped before each pass: the FUSE path's throughput over warm data.
func BenchmarkFUSESequentialRead(b *testing.B) {
	size := benchFileSize(b)
	f := mountBigFile(b, size)
	buf := make([]byte, 1<<20)
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		dropPages(b, f)
		b.StartTimer()
		for off := int64(0); off < size; off += int64(len(buf)) {
			if _, err := f.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkFUSERandomRead4K reads 4 KiB at random 4 KiB-aligned offsets,
// page cache dropped first (the file is larger than what one run touches).
func BenchmarkFUSERandomRead4K(b *testing.B) {
	size := min(benchFileSize(b), 128<<20)
	f := mountBigFile(b, size)
	dropPages(b, f)
	rng := rand.New(rand.NewPCG(3, 3))
	p := make([]byte, 4096)
	b.SetBytes(int64(len(p)))
	b.ResetTimer()
	for b.Loop() {
		off := rng.Int64N(size/4096) * 4096
		if _, err := f.ReadAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMount100k builds and mounts the tree of a 100,000-entry layer
// and unmounts it; it reports the heap a mounted layer keeps per entry
// (TOC included, as the daemon holds it).
func BenchmarkMount100k(b *testing.B) {
	requireFUSE(b)
	const n = 100_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	toc := benchTOC(n)
	server, dir := mountTOC(b, toc)
	runtime.GC()
	runtime.ReadMemStats(&after)
	perEntry := float64(after.HeapAlloc-before.HeapAlloc) / n
	if err := server.Unmount(); err != nil {
		b.Fatal(err)
	}
	runtime.KeepAlive(toc)
	b.Logf("mounted layer of %d entries at %s keeps %.1f heap bytes per entry (%.1f MiB)", n, dir, perEntry, perEntry*n/(1<<20))
	b.ResetTimer()
	for b.Loop() {
		s, _ := mountTOC(b, toc)
		b.StopTimer()
		if err := s.Unmount(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(perEntry, "heapB/entry")
}

func mountTOC(b *testing.B, toc TOC) (*fuse.Server, string) {
	b.Helper()
	root, err := NewRoot(toc, &memReader{}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	server, err := fusefs.Mount(dir, root, MountOptions(MountConfig{}))
	if err != nil {
		b.Fatalf("mount: %v", err)
	}
	return server, dir
}
