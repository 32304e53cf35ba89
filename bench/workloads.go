package bench

import (
	"archive/tar"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/image"
)

// Workload is an image whose entrypoint (the probe) does some reading and
// then prints "ready".
type Workload struct {
	Name        string
	Description string
	// Spec builds the image around the static probe binary.
	Spec func(probe []byte) image.Spec
	// Prefetch: the image is indexed by our soci, run once on a recording
	// daemon, and pushed again with a prefetch artifact made from the
	// trace (recordPrefetch); runs compare it with the image without.
	Prefetch bool
	// Plain pushes the image without SOCI index.
	Plain bool
	// DaemonConfig is added to the soci daemons' configuration for this
	// workload.
	DaemonConfig string
}

// ParallelPullConfig is the daemon configuration of the parallel-1g
// workload: parallel pull and unpack as the primary mode, 10 downloads per
// image as the reference advises, 4 MiB chunks (smaller than its 16 MiB
// advice: on a shared link each download gets a tenth of the rate, and the
// unpack reads a layer in order) and one unpack per core of the bench
// machine.
const ParallelPullConfig = `
[pull_modes.parallel_pull_unpack]
  enable = true
  concurrent_download_chunk_size = "4mb"
  max_concurrent_downloads_per_image = 10
  max_concurrent_unpacks_per_image = 2
  discard_unpacked_layers = true
`

// ParallelIndexedConfig is the daemon configuration of the
// parallel-1g-indexed workload: parallel pull primary with the reference's
// default of one unpack per image, so that what makes a layer faster is
// inflating it on every core (from its zTOC's checkpoints).
const ParallelIndexedConfig = `
[pull_modes.parallel_pull_unpack]
  enable = true
  concurrent_download_chunk_size = "4mb"
  max_concurrent_downloads_per_image = 10
  max_concurrent_unpacks_per_image = 1
  discard_unpacked_layers = true
`

// Workloads returns every workload by name, in report order.
func Workloads() []Workload {
	return []Workload{
		{Name: "sparse-1g", Description: "~1 GB incompressible over 5 layers; reads 4 MiB of it", Spec: func(p []byte) image.Spec {
			return sparseSpec(p, 5, 200<<20)
		}},
		{Name: "many-files", Description: "50,000 small files in 500 dirs over 2 layers; stats all, reads 5%", Spec: manyFilesSpec},
		{Name: "import-chain", Description: "300 files read one after another, each naming the next, among 3,000", Spec: importChainSpec},
		{Name: "read-all", Description: "2 layers of 400 files of 128 KiB; reads every file", Spec: readAllSpec},
		{Name: "parallel-1g", Description: "1 GiB of text-like files (~2:1 under gzip) over 8 layers, no SOCI index; " +
			"soci with parallel pull and unpack; reads 1 MiB", Spec: parallelSpec, Plain: true, DaemonConfig: ParallelPullConfig},
		{Name: "parallel-1g-indexed", Description: "parallel-1g with a SOCI index; soci with parallel pull primary, " +
			"one unpack per image; reads 1 MiB", Spec: parallelSpec, DaemonConfig: ParallelIndexedConfig},
		withPrefetch("many-files", manyFilesSpec),
		withPrefetch("import-chain", importChainSpec),
		withPrefetch("sparse-1g", func(p []byte) image.Spec { return sparseSpec(p, 5, 200<<20) }),
		{Name: "sparse-small", Description: "~96 MB incompressible over 2 layers; reads 3 MiB of it (quick profile)", Spec: func(p []byte) image.Spec {
			return sparseSpec(p, 2, 48<<20)
		}},
	}
}

// ReadyMarker is the file a Prefetch workload's container opens just
// before it prints "ready"; the recording daemon's record_until_file.
const ReadyMarker = "/bin/ready-marker"

// withPrefetch is the Prefetch workload name+"+prefetch" of spec: its base
// layer also holds ReadyMarker, which the container reads last.
func withPrefetch(name string, spec func([]byte) image.Spec) Workload {
	return Workload{Name: name + "+prefetch", Description: name + " without and with a prefetch artifact recorded on one run", Spec: func(p []byte) image.Spec {
		s := spec(p)
		base := &s.Layers[0]
		base.Entries = append(base.Entries, image.Entry{Name: ReadyMarker[1:], Type: tar.TypeReg, Mode: 0o644,
			ModTime: time.Unix(epochSeconds, 0), Data: []byte("r")})
		// Cmd ends with "ready": read the marker just before.
		s.Cmd = append(s.Cmd[:len(s.Cmd)-1:len(s.Cmd)-1], "read-bytes", ReadyMarker, "1", "--", "ready")
		return s
	}, Prefetch: true}
}

// DefaultWorkloads are run unless asked otherwise.
func DefaultWorkloads() []string {
	return []string{"sparse-1g", "many-files", "import-chain", "read-all"}
}

// QuickWorkloads are run by -quick.
func QuickWorkloads() []string { return []string{"sparse-small"} }

// epochSeconds is the mtime of every entry.
const epochSeconds = 1_600_000_000

func dir(name string) image.Entry {
	return image.Entry{Name: name, Type: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(epochSeconds, 0)}
}

// baseLayer holds the probe at /bin/probe.
func baseLayer(probe []byte) image.Layer {
	return image.Layer{Entries: []image.Entry{dir("bin"),
		{Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: time.Unix(epochSeconds, 0), Data: probe}}}
}

func spec(probe []byte, layers []image.Layer, cmd ...string) image.Spec {
	return image.Spec{
		Layers:     append([]image.Layer{baseLayer(probe)}, layers...),
		Entrypoint: []string{"/bin/probe"},
		Cmd:        cmd,
	}
}

// sparseSpec: n layers of one incompressible file of size bytes each; the
// container reads 1 MiB of the first, 2 MiB of the middle one and 1 MiB of
// the last.
func sparseSpec(probe []byte, n int, size int64) image.Spec {
	var layers []image.Layer
	for i := 0; i < n; i++ {
		layers = append(layers, image.Layer{Entries: []image.Entry{dir("big"),
			{Name: fmt.Sprintf("big/blob-%d", i), Type: tar.TypeReg, Mode: 0o644, ModTime: time.Unix(epochSeconds, 0), Size: size, Seed: int64(100 + i)}}})
	}
	return spec(probe, layers,
		"read-bytes", "/big/blob-0", "1048576", "--",
		"read-bytes", fmt.Sprintf("/big/blob-%d", n/2), "2097152", "--",
		"read-bytes", fmt.Sprintf("/big/blob-%d", n-1), "1048576", "--", "ready")
}

// parallelSpec: 8 layers of 64 compressible files of 2 MiB (1 GiB in
// all, no index: every layer is downloaded and unpacked whole before the
// container starts); the container reads 1 MiB of the last layer.
func parallelSpec(probe []byte) image.Spec {
	var layers []image.Layer
	for l := 0; l < 8; l++ {
		entries := []image.Entry{dir("data"), dir(fmt.Sprintf("data/l%d", l))}
		for f := 0; f < 64; f++ {
			entries = append(entries, image.Entry{Name: fmt.Sprintf("data/l%d/f%02d", l, f), Type: tar.TypeReg, Mode: 0o644,
				ModTime: time.Unix(epochSeconds, 0), Size: 2 << 20, Seed: int64(5000 + l*100 + f), Compressible: true})
		}
		layers = append(layers, image.Layer{Entries: entries})
	}
	return spec(probe, layers, "read-bytes", "/data/l7/f00", "1048576", "--", "ready")
}

// manyFilesSpec: 500 directories of 100 files of 200 B to 2 KiB, split over
// two layers.
func manyFilesSpec(probe []byte) image.Spec {
	var layers []image.Layer
	for l := 0; l < 2; l++ {
		entries := []image.Entry{dir("data")}
		for d := l * 250; d < (l+1)*250; d++ {
			dn := fmt.Sprintf("data/d%03d", d)
			entries = append(entries, dir(dn))
			for f := 0; f < 100; f++ {
				entries = append(entries, image.Entry{Name: fmt.Sprintf("%s/f%03d", dn, f), Type: tar.TypeReg, Mode: 0o644,
					ModTime: time.Unix(epochSeconds, 0), Size: int64(200 + (d*100+f)*997%1848), Seed: int64(d*1000 + f)})
			}
		}
		layers = append(layers, image.Layer{Entries: entries})
	}
	return spec(probe, layers, "stat-all", "/data", "--", "read-fraction", "/data", "5", "--", "ready")
}

// importChainSpec: 30 directories of 100 files of 4-12 KiB; every tenth file
// is a link of a chain of 300 that visits them in a scattered order, as
// imports of a large program do. Each chain file's first line names the next.
func importChainSpec(probe []byte) image.Spec {
	const dirs, per, links = 30, 100, 300
	name := func(i int) string { return fmt.Sprintf("d%02d/m%03d.py", i/per, i%per) }
	// order[k] is the file index of the k-th link; a fixed permutation.
	rng := rand.New(rand.NewPCG(5, 5))
	order := rng.Perm(links)
	next := map[int]string{}
	for k, idx := range order {
		target := "end"
		if k+1 < links {
			target = name(order[k+1] * 10)
		}
		next[idx*10] = target
	}
	entries := []image.Entry{dir("lib")}
	for d := 0; d < dirs; d++ {
		entries = append(entries, dir(fmt.Sprintf("lib/d%02d", d)))
		for f := 0; f < per; f++ {
			i := d*per + f
			size := int64(4096 + i*7919%8192)
			e := image.Entry{Name: "lib/" + name(i), Type: tar.TypeReg, Mode: 0o644, ModTime: time.Unix(epochSeconds, 0), Size: size, Seed: int64(i)}
			if target, ok := next[i]; ok {
				e.Data = chainContent(target, size, int64(i))
			}
			entries = append(entries, e)
		}
	}
	entries = append(entries, image.Entry{Name: "lib/start", Type: tar.TypeReg, Mode: 0o644, ModTime: time.Unix(epochSeconds, 0),
		Data: []byte(name(order[0]*10) + "\n")})
	return spec(probe, []image.Layer{{Entries: entries}}, "chain", "/lib", "--", "ready")
}

// chainContent is "<next>\n" followed by pseudo-random bytes, size in all.
func chainContent(next string, size, seed int64) []byte {
	b := make([]byte, size)
	n := copy(b, next+"\n")
	var key [32]byte
	key[0], key[1] = byte(seed), byte(seed>>8)
	_, _ = rand.NewChaCha8(key).Read(b[n:])
	return b
}

// readAllSpec: two layers of 400 incompressible files of 128 KiB.
func readAllSpec(probe []byte) image.Spec {
	var layers []image.Layer
	for l := 0; l < 2; l++ {
		entries := []image.Entry{dir("data"), dir(fmt.Sprintf("data/l%d", l))}
		for f := 0; f < 400; f++ {
			entries = append(entries, image.Entry{Name: fmt.Sprintf("data/l%d/f%03d", l, f), Type: tar.TypeReg, Mode: 0o644,
				ModTime: time.Unix(epochSeconds, 0), Size: 128 << 10, Seed: int64(l*1000 + f)})
		}
		layers = append(layers, image.Layer{Entries: entries})
	}
	return spec(probe, layers, "read-all", "/data", "--", "ready")
}
