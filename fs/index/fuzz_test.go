package index

import (
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck/tarchecktest"
)

// FuzzConvert mutates real zTOCs (gzip and tar) and runs them through the
// bounded decoder and Convert, which must never panic, and must only accept
// what the rest of the daemon can rely on. The C checkpoint code is not
// called here: it is only reached after Convert accepted the checkpoints.
func FuzzConvert(f *testing.F) {
	small := buildTar(f, testEntries(1<<10))
	_, plain := tarchecktest.BuildZTOC(f, small, 64<<10, compression.Uncompressed)
	f.Add(plain)
	f.Add(v1SingleCheckpoint(f, gzipMembers(f, small)))
	_, gz := tarchecktest.BuildZTOC(f, gzipMembers(f, buildTar(f, testEntries(70<<10))), 64<<10, compression.Gzip)
	f.Add(gz) // two spans: 64 KiB of checkpoint windows
	f.Fuzz(func(t *testing.T, data []byte) {
		z, err := decodeZTOC(data, Limits{}.withDefaults())
		if err != nil {
			return
		}
		toc, table, err := Convert(z)
		if err != nil {
			return
		}
		if err := table.Validate(); err != nil {
			t.Fatalf("Convert accepted an invalid span table: %v", err)
		}
		for _, e := range toc.Entries {
			checkAccepted(t, e, int64(z.UncompressedArchiveSize))
		}
	})
}

func checkAccepted(t *testing.T, e layer.Entry, size int64) {
	t.Helper()
	for _, name := range []string{e.Name, hardlinkTarget(e)} {
		if name == "" {
			continue
		}
		if name == "." || name == ".." || strings.HasPrefix(name, "/") || strings.HasPrefix(name, "../") ||
			strings.Contains(name, "/../") || strings.HasSuffix(name, "/..") || strings.Contains(name, "\x00") {
			t.Fatalf("Convert accepted the name %q", name)
		}
	}
	if e.Type == layer.TypeReg && (e.Offset < 0 || e.Size < 0 || e.Offset+e.Size > size) {
		t.Fatalf("Convert accepted data [%d, +%d) in a %d-byte stream", e.Offset, e.Size, size)
	}
	if e.Mode&^0o7777 != 0 {
		t.Fatalf("Convert kept mode bits %o", e.Mode)
	}
}

func hardlinkTarget(e layer.Entry) string {
	if e.Type == layer.TypeHardlink {
		return e.Linkname
	}
	return ""
}

// v1SingleCheckpoint builds the zTOC of a one-span gzip layer with its
// checkpoints in the version 1 format, where checkpoint 0 is implicit: a
// small zTOC, so fuzzing it is fast.
func v1SingleCheckpoint(f *testing.F, blob []byte) []byte {
	z, _ := tarchecktest.BuildZTOC(f, blob, 1<<20, compression.Gzip)
	if z.MaxSpanID != 0 {
		f.Fatalf("%d spans, want 1", z.MaxSpanID+1)
	}
	z.Checkpoints = z.Checkpoints[:blobHeaderSize] // count 1, span size, no checkpoints
	r, _, err := ztoc.Marshal(z)
	if err != nil {
		f.Fatal(err)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		f.Fatal(err)
	}
	if _, _, err := Convert(z); err != nil {
		f.Fatalf("v1 seed: %v", err)
	}
	return data
}

// FuzzParseIndex feeds index JSON to parseIndex, which must never panic,
// and must only accept indices whose every descriptor has a valid digest
// that maps to a path inside the store, and whose zTOCs are within the
// size bound.
func FuzzParseIndex(f *testing.F) {
	fx := newDiscoveryFixture(f)
	for _, d := range []ocispec.Descriptor{fx.v1, fx.v2} {
		f.Add(fx.reg.manifests[d.Digest])
	}
	m := validIndex(fx)
	m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: soci.SociLayerMediaType, Digest: "sha256:../../../../x", Size: 1,
		Annotations: map[string]string{soci.IndexAnnotationImageLayerDigest: "nocolon"}})
	bad, _ := json.Marshal(m)
	f.Add(bad)
	s, err := New(Options{Root: f.TempDir(), Registry: newFakeRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		idx, err := parseIndex(digest.FromBytes(data), data, "", Limits{MaxIndexEntries: 64, MaxZTOCBytes: 1 << 20})
		if err != nil {
			return
		}
		descs := append([]ocispec.Descriptor{idx.Manifest.Config}, idx.Manifest.Layers...)
		if idx.Manifest.Subject != nil {
			descs = append(descs, *idx.Manifest.Subject)
		}
		if len(idx.Manifest.Layers) > 64 {
			t.Fatalf("accepted %d entries", len(idx.Manifest.Layers))
		}
		for _, d := range descs {
			p, err := s.blobPath(d.Digest)
			if err != nil || !strings.HasPrefix(p, s.root+"/blobs/") || strings.Contains(p, "..") {
				t.Fatalf("accepted digest %q: path %q, %v", d.Digest, p, err)
			}
			if d.Size < 0 || d.MediaType == "" {
				t.Fatalf("accepted descriptor %+v", d)
			}
		}
		for _, z := range idx.ztocList {
			if z.Size <= 0 || z.Size > 1<<20 || z.MediaType != soci.SociLayerMediaType {
				t.Fatalf("accepted zTOC %+v", z)
			}
		}
	})
}

// FuzzZTOCTree mutates real zTOCs and runs them through what a mount
// does: the bounded decoder, Convert, loading the checkpoints and building
// the layer's tree with a small depth bound. None may panic; a tree that is
// built has no path deeper than the bound.
func FuzzZTOCTree(f *testing.F) {
	small := buildTar(f, testEntries(1<<10))
	_, plain := tarchecktest.BuildZTOC(f, small, 64<<10, compression.Uncompressed)
	f.Add(plain)
	f.Add(v1SingleCheckpoint(f, gzipMembers(f, small)))
	f.Add(synthZTOC(f, 1<<10, 1<<20, deepFiles(12)))
	lim := Limits{MaxZTOCEntries: 1 << 12, MaxZTOCHeapBytes: 64 << 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := ParseZTOC(data, lim)
		if err != nil {
			return
		}
		defer l.Close()
		if len(l.TOC.Entries) > lim.MaxZTOCEntries {
			t.Fatalf("accepted %d entries", len(l.TOC.Entries))
		}
		if _, err := layer.NewRoot(l.TOC, nopReader{}, layer.Options{MaxDepth: 8}); err != nil {
			return
		}
		for _, e := range l.TOC.Entries {
			checkAccepted(t, e, l.Spans.UncompressedSize)
			if strings.Count(e.Name, "/") >= 8 {
				t.Fatalf("tree built with %q deeper than 8", e.Name)
			}
		}
	})
}

// FuzzPrefetchArtifact feeds prefetch artifacts (JSON, hostile) to
// ParsePrefetchArtifact for layers of up to 65535 spans. It must never
// panic, and may only return spans the layer has, ascending, each once.
func FuzzPrefetchArtifact(f *testing.F) {
	f.Add(referenceArtifact(f, [2]int{10, 15}, [2]int{50, 55}), uint16(64))
	f.Add([]byte(`{"version":"1.0","prefetch_spans":[{"start_span":3,"end_span":9,"priority":1},{"start_span":0,"end_span":4}]}`), uint16(10))
	f.Add([]byte(`{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":18446744073709551615}]}`), uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, nspans uint16) {
		spans, err := ParsePrefetchArtifact(data, int(nspans))
		if err != nil {
			if !errors.Is(err, ErrPrefetchArtifact) {
				t.Fatalf("error %v does not wrap ErrPrefetchArtifact", err)
			}
			return
		}
		if len(spans) > int(nspans) {
			t.Fatalf("%d spans listed for a layer of %d", len(spans), nspans)
		}
		for k, i := range spans {
			if i < 0 || i >= int(nspans) || (k > 0 && i <= spans[k-1]) {
				t.Fatalf("span %d at %d of %v: out of range or order", i, k, spans)
			}
		}
	})
}
