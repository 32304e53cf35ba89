package background

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// fileBlob is an in-process registry blob read from a file, so that the
// layer's bytes are not on the heap measured.
type fileBlob struct{ f *os.File }

func (b fileBlob) FetchAt(_ context.Context, p []byte, off int64) (int, error) {
	return b.f.ReadAt(p, off)
}

// benchLayerFile writes a gzip layer of about mib MiB of tar stream to dir:
// many small files of half-random content and a few big ones. It returns
// the blob's path.
func benchLayerFile(b *testing.B, dir string, seed uint64, mib int) string {
	b.Helper()
	path := filepath.Join(dir, fmt.Sprintf("layer-%d.tar.gz", seed))
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	zw, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		b.Fatal(err)
	}
	tw := tar.NewWriter(zw)
	rng := rand.New(rand.NewPCG(seed, 7))
	text := []byte("the quick brown fox jumps over the lazy dog; soci spans and checkpoints\n")
	fill := func(p []byte) {
		for i := 0; i < len(p); i += 512 {
			blk := p[i:min(i+512, len(p))]
			if rng.IntN(2) == 0 {
				for k := range blk {
					blk[k] = byte(rng.Uint32())
				}
			} else {
				for k := range blk {
					blk[k] = text[(i+k)%len(text)]
				}
			}
		}
	}
	total, budget := int64(0), int64(mib)<<20
	data := make([]byte, 32<<20)
	for n := 0; total < budget; n++ {
		size := 1 + rng.IntN(64<<10) // many small files
		if n%500 == 0 {
			size = 16<<20 + rng.IntN(16<<20) // and a few big ones
		}
		size = int(min(int64(size), budget-total))
		p := data[:size]
		fill(p)
		if n%100 == 0 {
			if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d%d/", n/100), Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				b.Fatal(err)
			}
		}
		h := &tar.Header{Name: fmt.Sprintf("d%d/f%d", n/100, n), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size)}
		if err := tw.WriteHeader(h); err != nil {
			b.Fatal(err)
		}
		if _, err := tw.Write(p); err != nil {
			b.Fatal(err)
		}
		total += int64(size) + 512
	}
	for _, c := range []io.Closer{tw, zw} {
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
	}
	if err := bw.Flush(); err != nil {
		b.Fatal(err)
	}
	return path
}

// benchBlob is one generated layer: its blob file, digest and zTOC bytes.
type benchBlob struct {
	path   string
	digest digest.Digest
	ztoc   []byte
}

func newBenchBlob(b *testing.B, dir string, seed uint64, mib int) benchBlob {
	path := benchLayerFile(b, dir, seed, mib)
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		b.Fatal(err)
	}
	z, err := ztoc.NewBuilder("bench").BuildZtoc(path, 4<<20, ztoc.WithCompression(compression.Gzip))
	if err != nil {
		b.Fatal(err)
	}
	r, _, err := ztoc.Marshal(z)
	if err != nil {
		b.Fatal(err)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		b.Fatal(err)
	}
	return benchBlob{path: path, digest: digest.NewDigest(digest.SHA256, h), ztoc: data}
}

// sampler records the peak of the Go runtime's memory while it runs:
// HeapInuse-like (heap objects + unused heap spans not released) and the
// total mapped memory not returned to the OS.
type sampler struct {
	stop                      chan struct{}
	done                      chan struct{}
	peakHeap, peakGo, peakRSS uint64
}

// rss is the process's resident set (anonymous and mapped pages).
func rss() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, res uint64
	if _, err := fmt.Sscan(string(b), &size, &res); err != nil {
		return 0
	}
	return res * uint64(os.Getpagesize())
}

func startSampler() *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}
	go func() {
		defer close(s.done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(samples)
			heap := samples[0].Value.Uint64() + samples[1].Value.Uint64()
			goMem := samples[2].Value.Uint64() - samples[3].Value.Uint64()
			s.peakHeap, s.peakGo = max(s.peakHeap, heap), max(s.peakGo, goMem)
			s.peakRSS = max(s.peakRSS, rss())
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) end() { close(s.stop); <-s.done }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkBackgroundCompletion completes SOCI_BG_LAYERS (default 4) gzip
// layers of SOCI_BG_MIB (default 64) MiB of tar stream each at once through
// a Scheduler with the host's settings (4 workers, 8 MiB chunks, the
// default 64 MiB decompression bound, a disk cache, kept compressed
// copies), with every check on (blob digest, tar headers, span
// comparison). It reports the peak Go heap (heap-MiB: objects and unused
// heap spans) and Go memory not returned to the OS (go-MiB), sampled every
// 2 ms, bytes allocated per run, and the CPU seconds per GB of blob made
// local. The blobs are served from files, so only the walk's own memory
// counts; rss0-MiB is the process's RSS before the walks start. For a 1 GB image: SOCI_BG_LAYERS=4 SOCI_BG_MIB=256
// go test -run '^$' -bench BackgroundCompletion -benchtime 1x ./fs/background
func BenchmarkBackgroundCompletion(b *testing.B) {
	nLayers, mib := envInt("SOCI_BG_LAYERS", 4), envInt("SOCI_BG_MIB", 64)
	dir := b.TempDir()
	var blobs []benchBlob
	for i := range nLayers {
		blobs = append(blobs, newBenchBlob(b, dir, uint64(i+1), mib))
	}
	var peakHeap, peakGo, peakRSS, startRSS, cpu, compressed float64
	runs := 0
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		cdir := filepath.Join(dir, fmt.Sprintf("cache-%d", runs))
		c, err := cache.NewDisk(cdir)
		if err != nil {
			b.Fatal(err)
		}
		limit := span.NewDecompressLimit(64 << 20)
		var layers []Layer
		var closers []func()
		var size int64
		for i, bb := range blobs {
			f, err := os.Open(bb.path)
			if err != nil {
				b.Fatal(err)
			}
			z, err := index.ParseZTOC(bb.ztoc, index.Limits{})
			if err != nil {
				b.Fatal(err)
			}
			m, err := span.New(span.Options{
				Table: z.Spans, Fetcher: fileBlob{f}, Cache: c, Decompressor: z,
				CacheKey: bb.digest.String() + "/" + digest.FromBytes(bb.ztoc).String(),
				Limit:    limit, KeepCompressed: true,
			})
			if err != nil {
				b.Fatal(err)
			}
			closers = append(closers, func() { m.Close(); z.Close(); f.Close() })
			size += z.Spans.CompressedSize
			layers = append(layers, Layer{
				Key: fmt.Sprintf("/mnt/%d", i), Digest: bb.digest, Table: z.Spans, Blob: fileBlob{f},
				Spans: m.Loader(), ZTOC: digest.FromBytes(bb.ztoc), Files: &z.TOC, Gzip: z.Gzip(),
			})
		}
		var mu sync.Mutex
		errs := map[string]error{}
		all := make(chan struct{})
		s := New(Options{Workers: 4, ChunkSize: int64(envInt("SOCI_BG_CHUNK_MIB", 8)) << 20, MaxMemory: int64(envInt("SOCI_BG_BUDGET_MIB", 16)) << 20})
		s.onDone = func(key string, err error) {
			mu.Lock()
			defer mu.Unlock()
			errs[key] = err
			if len(errs) == len(layers) {
				close(all)
			}
		}
		debug.FreeOSMemory()
		startRSS = max(startRSS, float64(rss()))
		cpu0 := cpuTime()
		smp := startSampler()
		b.StartTimer()
		for _, l := range layers {
			if !s.Enqueue(context.Background(), l) {
				b.Fatal("not queued")
			}
		}
		<-all
		b.StopTimer()
		smp.end()
		cpu += (cpuTime() - cpu0).Seconds()
		s.Close()
		for k, err := range errs {
			if err != nil {
				b.Fatalf("layer %s: %v", k, err)
			}
		}
		for _, cl := range closers {
			cl()
		}
		_ = c.Close()
		_ = os.RemoveAll(cdir)
		peakHeap, peakGo = max(peakHeap, float64(smp.peakHeap)), max(peakGo, float64(smp.peakGo))
		peakRSS = max(peakRSS, float64(smp.peakRSS))
		compressed += float64(size)
		runs++
		b.StartTimer()
	}
	b.ReportMetric(peakHeap/(1<<20), "heap-MiB")
	b.ReportMetric(peakGo/(1<<20), "go-MiB")
	b.ReportMetric(peakRSS/(1<<20), "rss-MiB")
	b.ReportMetric(startRSS/(1<<20), "rss0-MiB")
	b.ReportMetric(cpu/(compressed/1e9), "cpu-s/GB")
	b.ReportMetric(compressed/float64(runs)/(1<<20), "blob-MiB")
}
