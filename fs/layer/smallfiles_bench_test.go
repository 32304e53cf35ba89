package layer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// Small-files benchmarks: a layer of many small files (a node_modules-like
// tree) mounted through FUSE and served by a span Manager over the disk span
// cache with every span cached, as the FUSE host serves a layer whose data
// is local. The fetcher fails: a benchmark that fetches is broken.

const (
	smallFiles     = 20_000
	smallPerDir    = 100
	smallSpanBytes = 4 << 20
)

// smallLayer is the generated layer: its TOC, the files' paths and the
// span manager serving it.
type smallLayer struct {
	toc   TOC
	paths []string
	r     *span.Manager
}

// noFetch fails every fetch.
type noFetch struct{}

func (noFetch) FetchAt(context.Context, []byte, int64) (int, error) {
	return 0, errors.New("benchmark fetched from the registry: spans should be cached")
}

// identity "decompresses" spans stored uncompressed.
type identity struct{}

func (identity) Decompress(b []byte, _ int) ([]byte, error) { return b, nil }

// newSmallLayer generates n files of 1-8 KiB in directories of
// smallPerDir, cuts the stream into spans of smallSpanBytes and puts every
// span in a disk cache under dir.
func newSmallLayer(b *testing.B, n int, dir string) *smallLayer {
	b.Helper()
	var tb tocBuilder
	rng := rand.New(rand.NewPCG(7, 7))
	content := make([]byte, 8<<10)
	l := &smallLayer{}
	for i := 0; i < n; i++ {
		d := fmt.Sprintf("node_modules/pkg%04d", i/smallPerDir)
		if i%smallPerDir == 0 {
			tb.dir(d)
		}
		size := 1<<10 + rng.IntN(7<<10+1)
		for j := range size {
			content[j] = byte(i + j)
		}
		p := d + "/f" + strconv.Itoa(i) + ".js"
		tb.file(p, string(content[:size]))
		l.paths = append(l.paths, p)
	}
	data := tb.r.data
	var table span.Table
	for off := int64(0); off < int64(len(data)); off += smallSpanBytes {
		end := min(off+smallSpanBytes, int64(len(data)))
		table.Spans = append(table.Spans, span.Span{CompressedStart: off, CompressedEnd: end,
			UncompressedStart: off, UncompressedEnd: end, Digest: digest.FromBytes(data[off:end])})
	}
	table.CompressedSize, table.UncompressedSize = int64(len(data)), int64(len(data))
	c, err := cache.NewDisk(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	const key = "sha256:layer/sha256:ztoc"
	for _, s := range table.Spans {
		k := key + "/" + strconv.FormatInt(s.UncompressedStart, 10) + "-" + strconv.FormatInt(s.UncompressedEnd, 10)
		if err := c.Put(k, data[s.UncompressedStart:s.UncompressedEnd]); err != nil {
			b.Fatal(err)
		}
	}
	m, err := span.New(span.Options{Table: table, Fetcher: noFetch{}, Cache: c, Decompressor: identity{}, CacheKey: key})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	l.toc, l.r = tb.toc, m
	return l
}

// mountSmall mounts the layer; the returned func unmounts it.
func (l *smallLayer) mount(b *testing.B) (string, func()) {
	b.Helper()
	requireFUSE(b)
	root, err := NewRoot(l.toc, l.r, Options{})
	if err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "smallfiles-mnt-")
	if err != nil {
		b.Fatal(err)
	}
	server, err := fusefs.Mount(dir, root, MountOptions(MountConfig{}))
	if err != nil {
		b.Fatalf("mount: %v", err)
	}
	return dir, func() {
		if err := server.Unmount(); err != nil {
			b.Errorf("unmount: %v", err)
		}
		os.Remove(dir)
	}
}

// readAll opens, reads and closes every file; it returns the bytes read.
func readAll(b *testing.B, mnt string, paths []string, buf []byte) int64 {
	var total int64
	for _, p := range paths {
		f, err := os.Open(filepath.Join(mnt, p))
		if err != nil {
			b.Fatal(err)
		}
		for {
			n, err := f.Read(buf)
			total += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		f.Close()
	}
	return total
}

// dropAll evicts every file's pages from the page cache.
func dropAll(b *testing.B, mnt string, paths []string) {
	for _, p := range paths {
		f, err := os.Open(filepath.Join(mnt, p))
		if err != nil {
			b.Fatal(err)
		}
		dropPages(b, f)
		f.Close()
	}
}

// BenchmarkSmallFilesWarmRead opens, reads and closes each of 20,000 files
// of 1-8 KiB (all spans cached, the kernel's entries and attributes warm,
// its page cache dropped before each pass): the cost per file of the FUSE
// read path over local data.
func BenchmarkSmallFilesWarmRead(b *testing.B) {
	l := newSmallLayer(b, smallFiles, b.TempDir())
	mnt, unmount := l.mount(b)
	defer unmount()
	buf := make([]byte, 64<<10)
	readAll(b, mnt, l.paths, buf) // warm the kernel's entries
	b.ReportAllocs()
	b.ResetTimer()
	var total int64
	for b.Loop() {
		b.StopTimer()
		dropAll(b, mnt, l.paths)
		b.StartTimer()
		total += readAll(b, mnt, l.paths, buf)
	}
	b.StopTimer()
	perPass := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(float64(len(l.paths))/perPass, "files/s")
	b.ReportMetric(float64(total)/float64(b.N)/(1<<20), "MiB/pass")
}

// BenchmarkSmallFilesColdStat walks a fresh mount of the layer and stats
// every entry (the kernel knows nothing yet: lookups and readdirs reach
// the tree).
func BenchmarkSmallFilesColdStat(b *testing.B) {
	l := newSmallLayer(b, smallFiles, b.TempDir())
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		mnt, unmount := l.mount(b)
		b.StartTimer()
		walkStat(b, mnt)
		b.StopTimer()
		unmount()
		b.StartTimer()
	}
}

// BenchmarkSmallFilesWarmStat stats every file again on a mount whose
// entries the kernel has cached (the entry and attribute timeouts).
func BenchmarkSmallFilesWarmStat(b *testing.B) {
	l := newSmallLayer(b, smallFiles, b.TempDir())
	mnt, unmount := l.mount(b)
	defer unmount()
	walkStat(b, mnt)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		walkStat(b, mnt)
	}
}

// walkStat lists every directory under mnt and stats every entry.
func walkStat(b *testing.B, mnt string) {
	n := 0
	err := filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if _, err := os.Lstat(p); err != nil {
			return err
		}
		n++
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	if n < smallFiles {
		b.Fatalf("walked %d entries, want at least %d", n, smallFiles)
	}
}

// BenchmarkSmallFilesRemountRead mounts the layer afresh (a new container
// of an image whose spans are local) and opens, reads and closes every
// file: lookups, opens and reads all reach the tree once.
func BenchmarkSmallFilesRemountRead(b *testing.B) {
	l := newSmallLayer(b, smallFiles, b.TempDir())
	buf := make([]byte, 64<<10)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		mnt, unmount := l.mount(b)
		b.StartTimer()
		readAll(b, mnt, l.paths, buf)
		b.StopTimer()
		unmount()
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(len(l.paths))/(b.Elapsed().Seconds()/float64(b.N)), "files/s")
}
