package trace

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/internal/clocktest"
)

var (
	manifest = digest.FromString("manifest")
	layerA   = digest.FromString("a")
	layerB   = digest.FromString("b")
	ztocA    = digest.FromString("ztoc-a")
)

func open(t *testing.T, until string) (*Recorder, *clocktest.Fake, string) {
	t.Helper()
	clock := clocktest.New()
	dir := t.TempDir()
	r, err := Open(Options{Dir: dir, Window: 30 * time.Second, UntilFile: until, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r, clock, dir
}

func read(t *testing.T, dir string) *Trace {
	t.Helper()
	p, err := Path(dir, manifest)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestWindow: reads within the window are recorded as coalesced ranges;
// the trace is written when the window ends (Tick), and later reads and
// mounts of the image record nothing.
func TestWindow(t *testing.T) {
	r, clock, dir := open(t, "")
	a := r.Layer(context.Background(), manifest, layerA, ztocA, 100)
	a.DemandRead(5, 6)
	a.DemandRead(8, 8)
	a.DemandRead(7, 7) // joins 5-6 and 8
	a.DemandRead(40, 41)
	clock.Advance(29 * time.Second)
	r.Tick()
	if _, err := os.Stat(must(Path(dir, manifest))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("trace written before the window ended: %v", err)
	}
	clock.Advance(time.Second)
	a.DemandRead(90, 90) // after the window: ends it, not recorded
	r.Wait()
	tr := read(t, dir)
	got := tr.Layers[layerA]
	want := []Range{{5, 8}, {40, 41}}
	if got.ZTOC != ztocA || got.SpanCount != 100 || !equal(got.Spans, want) {
		t.Fatalf("layer A trace %+v, want spans %v", got, want)
	}
	if b := r.Layer(context.Background(), manifest, layerB, ztocA, 10); b != nil {
		t.Fatal("a recorded image is recorded again")
	}
}

// TestUntilFile: opening the configured file ends the recording at once;
// opening another file does not.
func TestUntilFile(t *testing.T) {
	r, _, dir := open(t, "app/ready")
	a := r.Layer(context.Background(), manifest, layerA, ztocA, 10)
	b := r.Layer(context.Background(), manifest, layerB, ztocA, 10)
	a.DemandRead(0, 1)
	b.Opened("/app/other")
	b.DemandRead(3, 3)
	b.Opened("/app/ready")
	a.DemandRead(9, 9)
	r.Wait()
	tr := read(t, dir)
	if !equal(tr.Layers[layerA].Spans, []Range{{0, 1}}) || !equal(tr.Layers[layerB].Spans, []Range{{3, 3}}) {
		t.Fatalf("trace %+v", tr.Layers)
	}
}

// TestBounded: out-of-range spans are ignored and the ranges of an image
// stop growing at MaxRanges.
func TestBounded(t *testing.T) {
	r, _, dir := open(t, "")
	a := r.Layer(context.Background(), manifest, layerA, ztocA, 3*MaxRanges)
	a.DemandRead(-5, -1)
	a.DemandRead(3*MaxRanges, 3*MaxRanges+10)
	for i := 0; i < 3*MaxRanges; i += 2 {
		a.DemandRead(i, i)
	}
	_ = r.Close()
	tr := read(t, dir)
	if n := len(tr.Layers[layerA].Spans); n != MaxRanges {
		t.Fatalf("%d ranges, want the bound %d", n, MaxRanges)
	}
}

func TestParseRefuses(t *testing.T) {
	ok := `{"version":"1.0","manifest":"` + manifest.String() + `","layers":{"` + layerA.String() + `":{"ztoc":"` + ztocA.String() + `","span_count":10,"prefetch_spans":[{"start_span":0,"end_span":2},{"start_span":5,"end_span":9}]}}}`
	if _, err := Parse([]byte(ok)); err != nil {
		t.Fatal(err)
	}
	for name, doc := range map[string]string{
		"version":   `{"version":"2","manifest":"` + manifest.String() + `","layers":{}}`,
		"manifest":  `{"version":"1.0","manifest":"sha256:zz","layers":{}}`,
		"beyond":    `{"version":"1.0","manifest":"` + manifest.String() + `","layers":{"` + layerA.String() + `":{"ztoc":"` + ztocA.String() + `","span_count":10,"prefetch_spans":[{"start_span":5,"end_span":10}]}}}`,
		"negative":  `{"version":"1.0","manifest":"` + manifest.String() + `","layers":{"` + layerA.String() + `":{"ztoc":"` + ztocA.String() + `","span_count":10,"prefetch_spans":[{"start_span":-1,"end_span":1}]}}}`,
		"overlap":   `{"version":"1.0","manifest":"` + manifest.String() + `","layers":{"` + layerA.String() + `":{"ztoc":"` + ztocA.String() + `","span_count":10,"prefetch_spans":[{"start_span":0,"end_span":4},{"start_span":4,"end_span":5}]}}}`,
		"count":     `{"version":"1.0","manifest":"` + manifest.String() + `","layers":{"` + layerA.String() + `":{"ztoc":"` + ztocA.String() + `","span_count":0,"prefetch_spans":[]}}}`,
		"trailing":  ok + `{}`,
		"not json":  `nope`,
		"bad layer": `{"version":"1.0","manifest":"` + manifest.String() + `","layers":{"x":{"ztoc":"` + ztocA.String() + `","span_count":1}}}`,
	} {
		if _, err := Parse([]byte(doc)); !errors.Is(err, ErrTrace) {
			t.Errorf("%s: err %v, want ErrTrace", name, err)
		}
	}
}

func equal(a, b []Range) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func must(p string, err error) string {
	if err != nil {
		panic(err)
	}
	return p
}
