package index

import (
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// referenceArtifact is a prefetch artifact as soci's library writes it.
func referenceArtifact(t testing.TB, ranges ...[2]int) []byte {
	t.Helper()
	a := soci.NewPrefetchArtifact()
	for _, r := range ranges {
		a.AddPrefetchSpan(soci.PrefetchSpan{StartSpan: compression.SpanID(r[0]), EndSpan: compression.SpanID(r[1])})
	}
	rd, _, err := soci.MarshalPrefetchArtifact(a)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestParsePrefetchArtifact(t *testing.T) {
	cases := []struct {
		name string
		data string
		want []int
	}{
		{"reference", string(referenceArtifact(t, [2]int{10, 12}, [2]int{3, 3})), []int{3, 10, 11, 12}},
		{"overlapping and unordered", `{"version":"1.0","prefetch_spans":[{"start_span":5,"end_span":8},{"start_span":0,"end_span":6},{"start_span":7,"end_span":7}]}`,
			[]int{0, 1, 2, 3, 4, 5, 6, 7, 8}},
		{"priority and unknown fields", `{"version":"1.0","x":1,"prefetch_spans":[{"start_span":19,"end_span":19,"priority":3}]}`, []int{19}},
		{"no ranges", `{"version":"1.0","prefetch_spans":[]}`, nil},
	}
	for _, c := range cases {
		got, err := ParsePrefetchArtifact([]byte(c.data), 20)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: = %v, %v; want %v", c.name, got, err, c.want)
		}
	}
}

// TestParsePrefetchArtifactHostile: malformed, foreign or out-of-range
// artifacts are refused with ErrPrefetchArtifact, and wide ranges cost
// what the layer's spans cost.
func TestParsePrefetchArtifactHostile(t *testing.T) {
	wide := `{"version":"1.0","prefetch_spans":[` + strings.Repeat(`{"start_span":0,"end_span":9999},`, 20000) + `{"start_span":0,"end_span":0}]}`
	if got, err := ParsePrefetchArtifact([]byte(wide), 10000); err != nil || len(got) != 10000 {
		t.Errorf("20000 overlapping full ranges: %d spans, %v; want 10000", len(got), err)
	}
	cases := map[string]string{
		"empty":          ``,
		"null":           `null`,
		"array":          `[]`,
		"no version":     `{"prefetch_spans":[{"start_span":0,"end_span":1}]}`,
		"other version":  `{"version":"2.0","prefetch_spans":[{"start_span":0,"end_span":1}]}`,
		"missing end":    `{"version":"1.0","prefetch_spans":[{"start_span":0}]}`,
		"missing start":  `{"version":"1.0","prefetch_spans":[{"end_span":0}]}`,
		"negative":       `{"version":"1.0","prefetch_spans":[{"start_span":-1,"end_span":1}]}`,
		"reversed":       `{"version":"1.0","prefetch_spans":[{"start_span":5,"end_span":4}]}`,
		"past the end":   `{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":20}]}`,
		"huge":           `{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":9223372036854775808}]}`,
		"float":          `{"version":"1.0","prefetch_spans":[{"start_span":0.5,"end_span":1}]}`,
		"exponent":       `{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":1e3}]}`,
		"string span":    `{"version":"1.0","prefetch_spans":[{"start_span":"0","end_span":1}]}`,
		"trailing data":  `{"version":"1.0","prefetch_spans":[]} {}`,
		"trailing brace": `{"version":"1.0","prefetch_spans":[]}}`,
		"deep nesting":   `{"version":"1.0","x":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}`,
		"too large":      `{"version":"1.0","prefetch_spans":[],"x":"` + strings.Repeat("a", MaxPrefetchArtifactBytes) + `"}`,
	}
	for name, data := range cases {
		if got, err := ParsePrefetchArtifact([]byte(data), 20); !errors.Is(err, ErrPrefetchArtifact) {
			t.Errorf("%s: = %v, %v; want ErrPrefetchArtifact", name, got, err)
		}
	}
}

// TestIndexPrefetchArtifact: the index's prefetch entries are found by
// their layer; entries without a layer, or of another type, are not.
func TestIndexPrefetchArtifact(t *testing.T) {
	f := newDiscoveryFixture(t)
	m := validIndex(f)
	art := ocispec.Descriptor{MediaType: soci.SociPrefetchMediaType, Digest: digest.FromString("a"), Size: 10,
		Annotations: map[string]string{soci.IndexAnnotationImageLayerDigest: f.layer.String()}}
	second := art
	second.Digest = digest.FromString("b")
	orphan := ocispec.Descriptor{MediaType: soci.SociPrefetchMediaType, Digest: digest.FromString("c"), Size: 10}
	other := ocispec.Descriptor{MediaType: "application/x-other", Digest: digest.FromString("d"), Size: 10,
		Annotations: map[string]string{soci.IndexAnnotationImageLayerDigest: digest.FromString("L2").String()}}
	m.Layers = append(m.Layers, orphan, art, second, other)
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := parseIndex(digest.FromBytes(data), data, "", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := idx.PrefetchArtifact(f.layer); !ok || got.Digest != art.Digest {
		t.Errorf("PrefetchArtifact(layer) = %v, %v; want the first one, %s", got.Digest, ok, art.Digest)
	}
	if _, ok := idx.PrefetchArtifact(digest.FromString("L2")); ok {
		t.Error("an entry of another media type was taken for a prefetch artifact")
	}
}

// TestPrefetchSpans: the artifact is fetched, size- and digest-checked,
// and parsed for the layer's span count; bad descriptors are refused
// before any request.
func TestPrefetchSpans(t *testing.T) {
	reg := newFakeRegistry()
	s := newStore(t, t.TempDir(), reg, false, true)
	data := referenceArtifact(t, [2]int{2, 4})
	desc := reg.putBlob(data)
	desc.MediaType = soci.SociPrefetchMediaType
	got, err := s.PrefetchSpans(t.Context(), "example.com/x:1", desc, 8)
	if err != nil || !slices.Equal(got, []int{2, 3, 4}) {
		t.Fatalf("PrefetchSpans = %v, %v", got, err)
	}
	if _, err := s.PrefetchSpans(t.Context(), "example.com/x:1", desc, 3); !errors.Is(err, ErrPrefetchArtifact) {
		t.Errorf("spans past a 3-span layer: %v, want ErrPrefetchArtifact", err)
	}
	wrongSize := desc
	wrongSize.Size++
	if _, err := s.PrefetchSpans(t.Context(), "example.com/x:1", wrongSize, 8); err == nil {
		t.Error("a blob of another size than the index says was accepted")
	}
	// The registry answers other bytes under the digest.
	lying := desc
	lying.Digest = digest.FromString("not it")
	reg.mu.Lock()
	reg.blobs[lying.Digest] = data
	reg.mu.Unlock()
	if _, err := s.PrefetchSpans(t.Context(), "example.com/x:1", lying, 8); err == nil || !strings.Contains(err.Error(), "digest mismatch") {
		t.Errorf("bytes of another digest: %v, want a digest mismatch", err)
	}
	for name, d := range map[string]ocispec.Descriptor{
		"too large":  {MediaType: soci.SociPrefetchMediaType, Digest: digest.FromString("big"), Size: MaxPrefetchArtifactBytes + 1},
		"media type": {MediaType: soci.SociLayerMediaType, Digest: digest.FromString("mt"), Size: 10},
		"digest":     {MediaType: soci.SociPrefetchMediaType, Digest: "sha256:../../x", Size: 10},
	} {
		if _, err := s.PrefetchSpans(t.Context(), "example.com/x:1", d, 8); !errors.Is(err, ErrPrefetchArtifact) {
			t.Errorf("%s: %v, want ErrPrefetchArtifact", name, err)
		}
		if n := reg.count("blob", d.Digest); n != 0 {
			t.Errorf("%s: fetched %d times, want never", name, n)
		}
	}
}
