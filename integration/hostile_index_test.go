package integration

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/hostile"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// Bounds and sizes of TestHostileIndex.
const (
	// hostileRSSBound is the peak RSS (VmHWM, reset before each case) the
	// daemon may reach while it handles one hostile image.
	hostileRSSBound = 400 << 20
	// largestX2RSSBound is d_largest_accepted_x2's: two layers whose zTOCs
	// each just fit the default [limits] (see the case).
	largestX2RSSBound = 600 << 20
	// bombEntries is the entry count of the entry-count bomb: twice the
	// default max_ztoc_entries (1Mi), in a zTOC of about 8 MiB.
	bombEntries = 2 << 20
	// chainDepth is the depth of the directory chain case (the default
	// max_tree_depth is 1024).
	chainDepth = 100_000
	// hostileRunTimeout bounds one container run of a case.
	hostileRunTimeout = 90 * time.Second
)

// indexCase is one hostile image and what the daemon may make of it.
type indexCase struct {
	name  string
	ref   string
	paths []string
	want  map[string]string
	// layers are the image layers the hostile data is about; none of them
	// may be served lazily unless eio or lazyOK allow it.
	layers []digest.Digest
	// ids are digests (or malformed digest strings) of the hostile
	// artefact; a log line at warning level or above naming one of them
	// and matching cause must say why the image was not served lazily.
	ids   []string
	cause *regexp.Regexp
	// eio are the files that may fail with EIO while the rest of the
	// image reads correctly (the layer served lazily, the lie found when
	// the file is read).
	eio []string
	// lazyOK: serving the layer lazily is right as long as every file
	// reads correctly (an absolute name is cleaned, not an escape).
	lazyOK bool
	// honest: an honest image; only its content is checked.
	honest bool
	// rssBound, if set, replaces hostileRSSBound for this case.
	rssBound int64
}

// hostileSuite is one environment shared by every case: the daemon,
// containerd and registry, the canaries outside the daemon's root, and
// what each case measured.
type hostileSuite struct {
	e        *harness.Env
	canaries *hostile.Canaries
	pid      int // the FUSE host's, which parses and holds the registry data
	base     image.Layer
	summary  []string
}

// TestHostileIndex serves hostile SOCI indices and zTOCs from the real
// registry to the real daemon, containerd and nerdctl. For every case the
// daemon must survive (same pid), leave the canary files outside its root
// alone, stay under hostileRSSBound of peak RSS, and either have the image
// pulled normally (correct content, no lazily served layer for it) or
// serve it lazily with EIO for the affected file only; a daemon log line
// at warning level or above names the artefact and the cause.
func TestHostileIndex(t *testing.T) {
	e := startEnv(t, defaultDaemonConfig)
	ctx := testContext(t, 10*time.Minute)
	canaries, err := hostile.NewCanaries(filepath.Join(e.Dir, "canary"), "victim", "bystander")
	if err != nil {
		t.Fatal(err)
	}
	s := &hostileSuite{e: e, canaries: canaries, pid: e.Daemon.HostPid(), base: image.Layer{Entries: []image.Entry{
		dir("bin"), {Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary},
	}}}
	t.Cleanup(func() {
		t.Logf("FUSE host peak RSS per case (bound %d MiB):\n%s", hostileRSSBound>>20, strings.Join(s.summary, "\n"))
	})
	// escape is a name that climbs from any layer directory to the canary.
	escape := strings.Repeat("../", 12) + strings.TrimPrefix(canaries.Path("victim"), "/")

	t.Run("b_dotdot_name", func(t *testing.T) {
		s.check(t, ctx, s.ztocCase(t, ctx, "dotdot", func(z *ztoc.Ztoc, _ []byte) ([]byte, error) {
			return encodeAfter(z, hostile.Rename(z, "data/a.txt", escape))
		}, regexp.MustCompile(`(?i)escape|outside|travers|unsafe|bad name|invalid name`)))
	})
	t.Run("b_absolute_name", func(t *testing.T) {
		c := s.ztocCase(t, ctx, "absolute", func(z *ztoc.Ztoc, _ []byte) ([]byte, error) {
			return encodeAfter(z, hostile.Rename(z, "data/a.txt", "/data/a.txt"))
		}, regexp.MustCompile(`(?i)absolute|bad name|invalid name`))
		c.lazyOK = true // "/data/a.txt" is data/a.txt, as in the tar
		s.check(t, ctx, c)
	})
	t.Run("b_nul_name", func(t *testing.T) {
		s.check(t, ctx, s.ztocCase(t, ctx, "nul", func(z *ztoc.Ztoc, _ []byte) ([]byte, error) {
			return encodeAfter(z, hostile.Rename(z, "data/a.txt", "data/a.txt\x00/../../"+escape))
		}, regexp.MustCompile(`(?i)\bNUL\b|null|zero byte|bad name|invalid name|control`)))
	})
	t.Run("c_deep_chain", func(t *testing.T) {
		s.check(t, ctx, s.ztocCase(t, ctx, "deep", func(z *ztoc.Ztoc, _ []byte) ([]byte, error) {
			hostile.AddDeepChain(z, "chain", chainDepth)
			return hostile.Encode(z)
		}, regexp.MustCompile(`(?i)depth|deep|nest|level|too long|length`)))
	})
	t.Run("e_offset_beyond_blob", func(t *testing.T) {
		c := s.ztocCase(t, ctx, "beyond", func(z *ztoc.Ztoc, _ []byte) ([]byte, error) {
			return encodeAfter(z, hostile.MoveBeyond(z, "data/b.bin"))
		}, regexp.MustCompile(`(?i)outside|beyond|offset|range`))
		c.eio = []string{"/data/b.bin"}
		s.check(t, ctx, c)
	})
	t.Run("e_overlapping_spans", func(t *testing.T) {
		c := s.ztocCase(t, ctx, "overlap", func(z *ztoc.Ztoc, blob []byte) ([]byte, error) {
			return encodeAfter(z, hostile.OverlapSpans(z, blob))
		}, regexp.MustCompile(`(?i)overlap|order|follow|checkpoint|span`))
		c.eio = []string{"/data/b.bin"}
		s.check(t, ctx, c)
	})
	t.Run("f_altered_windows_shared_layer", func(t *testing.T) {
		bad, good := s.windowCases(t, ctx)
		s.check(t, ctx, bad)
		s.check(t, ctx, good)
	})
	t.Run("a_traversal_digest", func(t *testing.T) {
		bad := digest.Digest("sha256:" + strings.TrimPrefix(s.fromBlobDir(t, canaries.Path("victim")), "/"))
		s.check(t, ctx, s.indexEntryCase(t, ctx, "traversal", ocispec.Descriptor{
			MediaType: "application/octet-stream", Digest: bad, Size: canaries.Size("victim"),
		}))
	})
	// The order matters only for a daemon without the defences: a bomb
	// it accepts stays decoded in memory while its layer is mounted (the
	// later cases report it as their RSS at start), and the colon-less
	// digest kills it (then ensureDaemon restarts it).
	t.Run("d_entry_bomb", func(t *testing.T) {
		s.check(t, ctx, s.ztocCase(t, ctx, "bomb", func(z *ztoc.Ztoc, _ []byte) ([]byte, error) {
			data, err := hostile.EntryBomb(z, "d", bombEntries)
			t.Logf("entry bomb: %d entries in %d bytes", len(z.FileMetadata)+bombEntries, len(data))
			return data, err
		}, regexp.MustCompile(`(?i)entries|entry count|too many|budget|larger than|flatbuffer`)))
	})
	// The worst accepted case: zTOCs just under every default bound at
	// once, one layer, then two layers of one image mounted together (the
	// bounds are per zTOC, so N such layers cost about N times as much).
	t.Run("d_largest_accepted", func(t *testing.T) {
		s.check(t, ctx, s.largestCase(t, ctx, "largest", 1))
	})
	t.Run("d_largest_accepted_x2", func(t *testing.T) {
		c := s.largestCase(t, ctx, "largest2", 2)
		// The store loads zTOCs one at a time within max_ztoc_heap_bytes
		// (so the two transient peaks don't add up), but the first
		// layer stays mounted: its decoded xattrs and tree (about 70 MiB
		// live) sit under the second load's peak (about 260 MiB over the
		// RSS at start), and the larger live heap lets the collector
		// leave more garbage. Measured 392 MiB at the 384 MiB heap
		// default (498 MiB at 512 MiB, 254 MiB at 256 MiB).
		c.rssBound = largestX2RSSBound
		s.check(t, ctx, c)
	})
	t.Run("a_colonless_digest", func(t *testing.T) {
		sum := sha256.Sum256([]byte("no colon"))
		bad := digest.Digest("sha256" + hex.EncodeToString(sum[:]))
		s.check(t, ctx, s.indexEntryCase(t, ctx, "colonless", ocispec.Descriptor{
			MediaType: "application/octet-stream", Digest: bad, Size: 1234,
		}))
	})
}

// largestCase builds the probe layer plus layers case layers, each with a
// zTOC made by hostile.LargestAccepted under the default [limits]: the
// daemon may serve them lazily (they are within its bounds) or refuse
// them, as long as it survives and stays under hostileRSSBound.
func (s *hostileSuite) largestCase(t *testing.T, ctx context.Context, name string, layers int) indexCase {
	t.Helper()
	def := config.Default().Limits
	lim := hostile.Limits{MaxZTOCBytes: int64(def.MaxZTOCBytes), MaxZTOCEntries: int64(def.MaxZTOCEntries),
		MaxZTOCHeapBytes: int64(def.MaxZTOCHeapBytes), MaxTreeDepth: def.MaxTreeDepth}
	spec := image.Spec{Layers: []image.Layer{s.base}, Entrypoint: []string{"/bin/probe"}}
	c := indexCase{name: name, want: map[string]string{}, lazyOK: true,
		cause: regexp.MustCompile(`(?i)max_ztoc|limit|estimat|entries|depth|memory|contradict`)}
	skip := []int{0}
	for i := range layers {
		layer, want, paths := caseLayer(fmt.Sprintf("%s-%d", name, i))
		for j, e := range layer.Entries {
			layer.Entries[j].Name = strings.Replace(e.Name, "data", fmt.Sprintf("data%d", i), 1)
		}
		for _, p := range paths {
			q := strings.Replace(p, "/data/", fmt.Sprintf("/data%d/", i), 1)
			c.paths = append(c.paths, q)
			c.want[q] = strings.Replace(want[p], "/data/", fmt.Sprintf("/data%d/", i), 1)
		}
		spec.Layers = append(spec.Layers, layer)
	}
	built := buildImage(t, spec)
	idx, err := sociimage.BuildIndex(built, 2, sociimage.Options{SpanSize: 1 << 20, SkipLayers: skip})
	if err != nil {
		t.Fatal(err)
	}
	for i := range layers {
		target := built.LayerDescs[1+i].Digest
		z, err := hostile.Decode(idx.ZTOCs[idx.ZTOCByLayer[target]])
		if err != nil {
			t.Fatal(err)
		}
		data, shape, err := hostile.LargestAccepted(z, fmt.Sprintf("fill%d", i), lim)
		if err != nil {
			t.Fatalf("craft the zTOC: %v", err)
		}
		t.Logf("layer %d zTOC: %s", 1+i, shape)
		if err := idx.SetZTOC(target, data); err != nil {
			t.Fatal(err)
		}
		c.layers = append(c.layers, target)
		c.ids = append(c.ids, idx.ZTOCByLayer[target].String(), target.String())
	}
	// The filler entries are not in the layer: a walk that reaches the
	// layer before the container reads (it starts at the mount) finds
	// the lie, and every file of the layer then fails with EIO.
	c.eio = slices.Clone(c.paths)
	c.ref = s.push(t, ctx, name, built, idx, nil)
	return c
}

// encodeAfter encodes z unless the mutation before failed.
func encodeAfter(z *ztoc.Ztoc, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	return hostile.Encode(z)
}

// caseLayer is the layer every zTOC case alters: a marker naming the case
// (so that each case's layer, and so its snapshot, is its own), a small
// file and a 2.5 MiB one (three 1 MiB spans).
func caseLayer(name string) (image.Layer, map[string]string, []string) {
	marker := []byte("hostile case " + name + "\n")
	small := []byte("a small file before the big one\n")
	layer := image.Layer{Entries: []image.Entry{
		dir("data"), file("data/case", marker), file("data/a.txt", small),
		{Name: "data/b.bin", Type: tar.TypeReg, Mode: 0o644, ModTime: epoch, Size: 5 << 19, Seed: 4242},
	}}
	want := map[string]string{
		"/data/case":  "/data/case " + sha256Hex(marker),
		"/data/a.txt": "/data/a.txt " + sha256Hex(small),
		"/data/b.bin": seededSum("/data/b.bin", 4242, 5<<19),
	}
	return layer, want, []string{"/data/case", "/data/a.txt", "/data/b.bin"}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// ztocCase builds the probe layer plus caseLayer(name), replaces the case
// layer's zTOC by what mutate makes of it (given the layer blob) and pushes
// the image as a SOCI v2 image.
func (s *hostileSuite) ztocCase(t *testing.T, ctx context.Context, name string,
	mutate func(*ztoc.Ztoc, []byte) ([]byte, error), cause *regexp.Regexp) indexCase {
	t.Helper()
	layer, want, paths := caseLayer(name)
	built := buildImage(t, image.Spec{Layers: []image.Layer{s.base, layer}, Entrypoint: []string{"/bin/probe"}})
	idx, err := sociimage.BuildIndex(built, 2, sociimage.Options{SpanSize: 1 << 20, SkipLayers: []int{0}})
	if err != nil {
		t.Fatal(err)
	}
	target := built.LayerDescs[1].Digest
	z, err := hostile.Decode(idx.ZTOCs[idx.ZTOCByLayer[target]])
	if err != nil {
		t.Fatal(err)
	}
	data, err := mutate(z, built.Layers[1])
	if err != nil {
		t.Fatalf("craft the zTOC: %v", err)
	}
	if err := idx.SetZTOC(target, data); err != nil {
		t.Fatal(err)
	}
	ref := s.push(t, ctx, name, built, idx, nil)
	return indexCase{
		name: name, ref: ref, paths: paths, want: want, layers: []digest.Digest{target},
		ids: []string{idx.ZTOCByLayer[target].String(), target.String()}, cause: cause,
	}
}

// indexEntryCase builds the probe layer plus caseLayer(name), with an
// honest zTOC, and an index listing one more entry, extra, which the
// registry refuses in a manifest PUT (see hostile.ManifestPlacer).
func (s *hostileSuite) indexEntryCase(t *testing.T, ctx context.Context, name string, extra ocispec.Descriptor) indexCase {
	t.Helper()
	layer, want, paths := caseLayer(name)
	built := buildImage(t, image.Spec{Layers: []image.Layer{s.base, layer}, Entrypoint: []string{"/bin/probe"}})
	idx, err := sociimage.BuildIndex(built, 2, sociimage.Options{SpanSize: 1 << 20, SkipLayers: []int{0}})
	if err != nil {
		t.Fatal(err)
	}
	if err := idx.AddLayer(extra); err != nil {
		t.Fatal(err)
	}
	placer := &hostile.ManifestPlacer{Storage: s.e.Registry.Storage}
	ref := s.push(t, ctx, name, built, idx, placer.Push)
	if placer.Refused != "" {
		t.Logf("registry refused the index manifest by PUT (%.160s); placed it in its storage instead", placer.Refused)
	}
	var layers []digest.Digest
	for _, l := range built.LayerDescs {
		layers = append(layers, l.Digest)
	}
	return indexCase{
		name: name, ref: ref, paths: paths, want: want, layers: layers,
		ids:   []string{idx.Desc.Digest.String(), extra.Digest.String()},
		cause: regexp.MustCompile(`(?i)invalid|malformed|bad|reject|unsafe|format|separator`),
	}
}

// windowCases pushes two images sharing one layer of compressible text in
// different snapshot chains (so that containerd mounts the layer once for
// each): a hostile one whose zTOC for it has altered checkpoint windows,
// and an honest one.
func (s *hostileSuite) windowCases(t *testing.T, ctx context.Context) (bad, good indexCase) {
	t.Helper()
	text := hostile.TextContent(3 << 20)
	shared := image.Layer{Entries: []image.Entry{dir("data"), file("data/text", text)}}
	want := map[string]string{"/data/text": "/data/text " + sha256Hex(text)}
	paths := []string{"/data/text"}
	other := image.Layer{Entries: []image.Entry{dir("hostile"), file("hostile/marker", []byte("windows\n"))}}

	hostileImg := buildImage(t, image.Spec{Layers: []image.Layer{s.base, other, shared}, Entrypoint: []string{"/bin/probe"}})
	honestImg := buildImage(t, image.Spec{Layers: []image.Layer{s.base, shared}, Entrypoint: []string{"/bin/probe"}})
	layer := honestImg.LayerDescs[1].Digest
	if hostileImg.LayerDescs[2].Digest != layer {
		t.Fatal("the shared layer differs between the images")
	}
	idx, err := sociimage.BuildIndex(hostileImg, 2, sociimage.Options{SpanSize: 1 << 20, SkipLayers: []int{0, 1}})
	if err != nil {
		t.Fatal(err)
	}
	z, err := hostile.Decode(idx.ZTOCs[idx.ZTOCByLayer[layer]])
	if err != nil {
		t.Fatal(err)
	}
	n, err := hostile.AlterWindows(z)
	if err != nil {
		t.Fatal(err)
	}
	data, err := hostile.Encode(z)
	if err != nil {
		t.Fatal(err)
	}
	if err := idx.SetZTOC(layer, data); err != nil {
		t.Fatal(err)
	}
	t.Logf("shared layer %s: %d checkpoint windows altered in zTOC %s", layer, n, idx.ZTOCByLayer[layer])
	bad = indexCase{
		name: "windows", ref: s.push(t, ctx, "windows-hostile", hostileImg, idx, nil), paths: paths, want: want,
		layers: []digest.Digest{layer}, ids: []string{idx.ZTOCByLayer[layer].String(), layer.String()},
		cause: regexp.MustCompile(`(?i)window|checkpoint|verif|mismatch|decompress`), eio: paths,
	}
	honestIdx, err := sociimage.BuildIndex(honestImg, 2, sociimage.Options{SpanSize: 1 << 20, SkipLayers: []int{0}})
	if err != nil {
		t.Fatal(err)
	}
	good = indexCase{
		name: "windows-honest", ref: s.push(t, ctx, "windows-honest", honestImg, honestIdx, nil), paths: paths, want: want,
		layers: []digest.Digest{layer}, honest: true,
	}
	return bad, good
}

func (s *hostileSuite) push(t *testing.T, ctx context.Context, name string, img *image.Image, idx *sociimage.Index, put sociimage.IndexPusher) string {
	t.Helper()
	ref := s.e.Registry.Host + "/hostile/" + name + ":v1"
	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := sociimage.PushV2Built(pctx, ref, img, idx, put); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// fromBlobDir is path relative to the directory where the daemon keeps its
// SOCI index and zTOC blobs (<root>/fs/index/blobs/sha256).
func (s *hostileSuite) fromBlobDir(t *testing.T, path string) string {
	t.Helper()
	rel, err := filepath.Rel(filepath.Join(s.e.Daemon.Root, "fs", "index", "blobs", "sha256"), path)
	if err != nil {
		t.Fatal(err)
	}
	return rel
}

// check runs c's image, reading its files, and checks what the daemon did.
func (s *hostileSuite) check(t *testing.T, ctx context.Context, c indexCase) {
	t.Helper()
	s.ensureDaemon(t, ctx)
	if err := s.canaries.Restore(); err != nil {
		t.Fatal(err)
	}
	// The peak restarts from the RSS the daemon has now (what earlier
	// cases left in memory, e.g. a hostile zTOC still mounted).
	if err := hostile.ResetPeakRSS(s.pid); err != nil {
		t.Error(err)
	}
	startRSS := "-"
	if stats, err := harness.ReadProcStats(s.pid); err == nil {
		startRSS = fmt.Sprintf("%.1f", float64(stats.PeakRSS)/(1<<20))
	}
	logStart := fileSize(t, s.e.Daemon.Log())
	fuseBefore := fuseLayers(t, s.e)

	rctx, cancel := context.WithTimeout(ctx, hostileRunTimeout)
	out, runErr := s.e.Nerdctl(rctx, append([]string{"--snapshotter", "soci", "run", "--rm", "--net", "none", c.ref, "sha256"}, c.paths...)...)
	cancel()
	if runErr != nil {
		t.Errorf("%s: the container did not run: %v", c.name, runErr)
	}

	rss := startRSS + " -> - MiB"
	if !hostile.Alive(s.pid, "soci-snapshotter-grpc") || s.e.Daemon.HostPid() != s.pid {
		t.Errorf("%s: the FUSE host (pid %d) is gone; last log lines:\n%s", c.name, s.pid, s.e.Daemon.LogTail(30))
	} else if stats, err := harness.ReadProcStats(s.pid); err != nil {
		t.Error(err)
	} else {
		rss = fmt.Sprintf("%s -> %.1f MiB", startRSS, float64(stats.PeakRSS)/(1<<20))
		bound := int64(hostileRSSBound)
		if c.rssBound > 0 {
			bound = c.rssBound
		}
		if stats.PeakRSS > bound {
			t.Errorf("%s: FUSE host peak RSS %s, over the bound of %d MiB", c.name, rss, bound>>20)
		}
	}
	if err := s.canaries.Check(); err != nil {
		t.Errorf("%s: %v", c.name, err)
	}
	logText := readFrom(t, s.e.Daemon.Log(), logStart)
	outcome, cause := "the container did not run", ""
	if runErr == nil {
		outcome, cause = s.judge(t, c, out, logText, fuseLayers(t, s.e)-fuseBefore)
	}
	line := fmt.Sprintf("  %-16s RSS at start -> peak: %-20s %s", c.name, rss, outcome)
	if cause != "" {
		line += "\n      log: " + brief(cause)
	}
	t.Log(line)
	s.summary = append(s.summary, line)
}

// judge decides whether what the container read and the daemon logged is
// an allowed outcome of c, and returns it with the cause line found.
func (s *hostileSuite) judge(t *testing.T, c indexCase, out, logText string, newFUSE int) (outcome, cause string) {
	t.Helper()
	lazy := false
	for _, line := range strings.Split(logText, "\n") {
		if strings.Contains(line, "layer mounted lazily") && namesAny(line, c.layers) {
			lazy = true
		}
	}
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(strings.TrimSpace(line)); len(f) >= 2 && strings.HasPrefix(f[0], "/") {
			got[f[0]] = strings.TrimSpace(line)
		}
	}
	var wrong, eio []string
	for _, p := range c.paths {
		switch {
		case got[p] == c.want[p]:
		case strings.Contains(got[p], "ERROR") && strings.Contains(got[p], "input/output error"):
			eio = append(eio, p)
		default:
			wrong = append(wrong, fmt.Sprintf("%s: got %q, want %q", p, got[p], c.want[p]))
		}
	}
	cause = causeLine(logText, c.ids, c.cause)
	needCause := false
	switch {
	case c.honest:
		outcome = "honest image reads correct bytes"
		if len(wrong)+len(eio) > 0 {
			outcome = "honest image reads WRONG bytes"
			t.Errorf("%s: the honest image must read what its layer holds: %v %v", c.name, wrong, eio)
		}
		return outcome, ""
	case !lazy:
		outcome, needCause = "fallback to a normal pull", true
		if len(wrong)+len(eio) > 0 {
			t.Errorf("%s: pulled normally but read wrong content: %v, EIO on %v", c.name, wrong, eio)
		}
		if newFUSE != 0 {
			t.Errorf("%s: no layer of it logged as mounted lazily, yet %d new FUSE mounts", c.name, newFUSE)
		}
	case len(wrong) == 0 && len(eio) == 0 && c.lazyOK:
		outcome = "served lazily, content correct (allowed for this case)"
	case len(wrong) == 0 && len(eio) > 0 && subset(eio, c.eio):
		outcome, needCause = fmt.Sprintf("served lazily, EIO for %v only", eio), true
	case len(wrong) > 0:
		outcome = "served lazily from the hostile artefact, WRONG bytes read without an error"
		t.Errorf("%s: layer %v was served lazily from the hostile artefact and reads gave wrong bytes, no error (want a fallback to a normal pull%s): %v",
			c.name, c.layers, eioNote(c.eio), wrong)
	default:
		outcome = "served lazily from the hostile artefact"
		t.Errorf("%s: layer %v was served lazily from the hostile artefact (want a fallback to a normal pull%s); EIO: %v",
			c.name, c.layers, eioNote(c.eio), eio)
	}
	if needCause && cause == "" {
		t.Errorf("%s: no daemon log line at warning level or above names %v and matches %q", c.name, c.ids, c.cause)
	}
	return outcome, cause
}

func eioNote(eio []string) string {
	if len(eio) == 0 {
		return ""
	}
	return fmt.Sprintf(" or EIO for %v only", eio)
}

// causeLine returns the first log line at warning level or above that names
// one of ids and matches cause.
func causeLine(logText string, ids []string, cause *regexp.Regexp) string {
	if cause == nil {
		return ""
	}
	for _, line := range strings.Split(logText, "\n") {
		if !warnLevel.MatchString(line) || !cause.MatchString(line) {
			continue
		}
		for _, id := range ids {
			if strings.Contains(line, id) {
				return line
			}
		}
	}
	return ""
}

// warnLevel matches logrus's text and JSON level fields of warning and above.
var warnLevel = regexp.MustCompile(`level"?[=:]"?(warn|warning|error|fatal|panic)\b`)

func namesAny(line string, ds []digest.Digest) bool {
	for _, d := range ds {
		if strings.Contains(line, d.String()) {
			return true
		}
	}
	return false
}

func subset(a, b []string) bool {
	for _, x := range a {
		found := false
		for _, y := range b {
			found = found || x == y
		}
		if !found {
			return false
		}
	}
	return true
}

// ensureDaemon restarts the daemon if an earlier case killed it, so that
// the following cases still test something.
func (s *hostileSuite) ensureDaemon(t *testing.T, ctx context.Context) {
	t.Helper()
	if hostile.Alive(s.pid, "soci-snapshotter-grpc") && s.e.Daemon.HostPid() == s.pid {
		return
	}
	// A dead FUSE host is started again by the daemon's start (or its
	// next call); a stray relaunched one is ended first.
	_ = s.e.Daemon.Stop() // collects a dead daemon
	_ = s.e.Daemon.Cleanup()
	if err := s.e.Daemon.Start(ctx); err != nil {
		t.Fatalf("restart the daemon and FUSE host an earlier case killed: %v\n%s", err, s.e.Daemon.LogTail(30))
	}
	s.pid = s.e.Daemon.HostPid()
	t.Logf("restarted the FUSE host an earlier case killed (new pid %d)", s.pid)
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Size()
}

// readFrom returns the content of path from offset on.
func readFrom(t *testing.T, path string, offset int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// logField matches one key=value field of a logrus text line.
var logField = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S+)`)

// brief shortens a daemon log line to its level, message, error and
// digest fields (the rest names snapshots and paths); lines of another
// format are cut at 600 bytes.
func brief(line string) string {
	var parts []string
	for _, m := range logField.FindAllStringSubmatch(line, -1) {
		switch m[1] {
		case "level", "msg", "error", "digest":
			parts = append(parts, m[0])
		}
	}
	if len(parts) == 0 {
		parts = []string{line}
	}
	out := strings.Join(parts, " ")
	if len(out) > 600 {
		out = out[:600] + "..."
	}
	return out
}
