package hostile

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/awslabs/soci-snapshotter/ztoc"
	fbs "github.com/awslabs/soci-snapshotter/ztoc/fbs/ztoc"

	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// fixture is the layer of textLayer, built once for all the tests.
var fixture struct {
	once       sync.Once
	ztoc, blob []byte
	err        error
}

// textLayer is a one-layer image of compressible text and random data, and
// a fresh decoding of its zTOC with 1 MiB spans.
func textLayer(t *testing.T) (*ztoc.Ztoc, []byte) {
	t.Helper()
	fixture.once.Do(func() {
		img, err := image.Build(image.Spec{Layers: []image.Layer{{Entries: []image.Entry{
			image.Dir("data"), image.File("data/text", TextContent(3<<20)), image.RandomFile("data/rand", 3<<20, 7),
		}}}})
		if err != nil {
			fixture.err = err
			return
		}
		idx, err := sociimage.BuildIndex(img, 2, sociimage.Options{SpanSize: 1 << 20})
		if err != nil {
			fixture.err = err
			return
		}
		fixture.ztoc, fixture.blob = idx.ZTOCs[idx.ZTOCByLayer[img.LayerDescs[0].Digest]], img.Layers[0]
	})
	if fixture.err != nil {
		t.Fatal(fixture.err)
	}
	z, err := Decode(fixture.ztoc)
	if err != nil {
		t.Fatal(err)
	}
	return z, fixture.blob
}

func TestAlterWindows(t *testing.T) {
	z, blob := textLayer(t)
	before, err := checkpoints(z)
	if err != nil {
		t.Fatal(err)
	}
	if len(before) < 3 {
		t.Fatalf("%d spans, want >= 3", len(before))
	}
	orig := bytes.Clone(z.Checkpoints)
	digests := append(z.SpanDigests[:0:0], z.SpanDigests...)
	n, err := AlterWindows(z)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := checkpoints(z)
	if n != len(before)-1 || fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("altered %d windows of %d checkpoints; offsets %v -> %v", n, len(before), before, after)
	}
	changed := 0
	for i := range orig {
		if orig[i] != z.Checkpoints[i] {
			changed++
		}
	}
	if changed != n*windowSize {
		t.Errorf("%d bytes changed, want %d (the windows only)", changed, n*windowSize)
	}
	if err := SetSpanDigests(z, blob); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(z.SpanDigests) != fmt.Sprint(digests) {
		t.Errorf("span digests computed again differ from the builder's: the digest convention is wrong")
	}
}

func TestOverlapSpans(t *testing.T) {
	z, blob := textLayer(t)
	if err := OverlapSpans(z, blob); err != nil {
		t.Fatal(err)
	}
	cps, _ := checkpoints(z)
	if cps[1].in != cps[2].in || cps[1].out != cps[2].out {
		t.Errorf("checkpoints 1 and 2 differ: %+v %+v", cps[1], cps[2])
	}
}

func TestEntryBomb(t *testing.T) {
	z, _ := textLayer(t)
	const extra = 20000
	data, err := EntryBomb(z, "d", extra)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 4*extra+64<<10+len(z.Checkpoints) {
		t.Errorf("bomb of %d entries is %d bytes", extra, len(data))
	}
	toc := fbs.GetRootAsZtoc(data, 0).Toc(nil)
	if got := toc.MetadataLength(); got != len(z.FileMetadata)+extra {
		t.Errorf("bomb has %d entries, want %d", got, len(z.FileMetadata)+extra)
	}
	back, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.FileMetadata) != len(z.FileMetadata)+extra || back.CompressedArchiveSize != z.CompressedArchiveSize ||
		!bytes.Equal(back.Checkpoints, z.Checkpoints) {
		t.Errorf("bomb decodes to %d entries, %d-byte blob", len(back.FileMetadata), back.CompressedArchiveSize)
	}
	for _, f := range back.FileMetadata {
		if f.Name == "data/text" && f.Type == "reg" {
			return
		}
	}
	t.Errorf("the real entries are lost")
}

func TestDeepChainAndRename(t *testing.T) {
	z, _ := textLayer(t)
	name := AddDeepChain(z, "deep", 1000)
	if strings.Count(name, "/") != 999 {
		t.Errorf("chain %q...: %d levels", name[:20], strings.Count(name, "/")+1)
	}
	if err := Rename(z, "data/text", "../x"); err != nil {
		t.Fatal(err)
	}
	if err := MoveBeyond(z, "data/rand"); err != nil {
		t.Fatal(err)
	}
	data, err := Encode(z)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := entry(back, "../x"); err != nil {
		t.Error(err)
	}
	if e, _ := entry(back, "data/rand"); e == nil || int64(e.UncompressedOffset) <= int64(back.UncompressedArchiveSize) {
		t.Errorf("data/rand not moved beyond the stream: %+v", e)
	}
}

// TestLargestAccepted: the crafted zTOC's estimate is within 1% under the
// heap limit, and it keeps the entry, size and depth limits.
func TestLargestAccepted(t *testing.T) {
	z, _ := textLayer(t)
	lim := Limits{MaxZTOCBytes: 256 << 20, MaxZTOCEntries: 1 << 20, MaxZTOCHeapBytes: 16 << 20, MaxTreeDepth: 64}
	data, shape, err := LargestAccepted(z, "fill", lim)
	if err != nil {
		t.Fatal(err)
	}
	est, err := Estimate(data)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(shape)
	if est != shape.Estimate || est > lim.MaxZTOCHeapBytes || est < lim.MaxZTOCHeapBytes*99/100 {
		t.Errorf("estimate %d (shape says %d), want within 1%% under %d", est, shape.Estimate, lim.MaxZTOCHeapBytes)
	}
	back, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.FileMetadata) != shape.Entries || int64(shape.Entries) > lim.MaxZTOCEntries {
		t.Errorf("%d entries, shape says %d", len(back.FileMetadata), shape.Entries)
	}
	deepest := 0
	for _, f := range back.FileMetadata {
		deepest = max(deepest, strings.Count(f.Name, "/")+1)
		if len(f.PAXHeaders) > 0 && len(f.PAXHeaders) != fillXattrs {
			t.Errorf("%s: %d xattrs", f.Name, len(f.PAXHeaders))
		}
	}
	if deepest != lim.MaxTreeDepth {
		t.Errorf("deepest name has %d components, want %d", deepest, lim.MaxTreeDepth)
	}
}
