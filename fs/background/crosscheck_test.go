package background

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"

	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck/tarchecktest"
)

// realLayer is a real layer blob with the zTOC soci's builder made for it,
// served by a real span manager over a memory cache.
type realLayer struct {
	blob  []byte
	ztoc  *index.Layer
	zdgst digest.Digest
}

func newRealLayer(t *testing.T, gzip bool) realLayer {
	t.Helper()
	tb := tarchecktest.Tar(t, tarchecktest.Entries(600<<10))
	blob, alg := tb, compression.Uncompressed
	if gzip {
		blob, alg = tarchecktest.Gzip(t, tb), compression.Gzip
	}
	data := tarchecktest.ZTOC(t, blob, 64<<10, alg)
	z, err := index.ParseZTOC(data, index.Limits{})
	if err != nil {
		t.Fatalf("parse zTOC: %v", err)
	}
	t.Cleanup(func() { z.Close() })
	if len(z.Spans.Spans) < 4 {
		t.Fatalf("only %d spans", len(z.Spans.Spans))
	}
	return realLayer{blob: blob, ztoc: z, zdgst: digest.FromBytes(data)}
}

// decompressor lets a test alter span i's output, as a zTOC with altered
// checkpoint windows would.
type decompressor struct {
	span.Decompressor
	alter int
}

func (d decompressor) Decompress(compressed []byte, i int) ([]byte, error) {
	out, err := d.Decompressor.Decompress(compressed, i)
	if err == nil && i == d.alter && len(out) > 0 {
		out = slices.Clone(out)
		out[len(out)/2] ^= 1
	}
	return out, err
}

// managed is the Spans of a real span manager, which tests reach too.
type managed struct {
	*span.Loader
	m *span.Manager
}

// layer returns the background layer of r with its span manager; table and
// files default to the zTOC's, alter (>= 0) corrupts that span's output.
func (r realLayer) layer(t *testing.T, key string, table *span.Table, files *layer.TOC, alter int) Layer {
	t.Helper()
	if table == nil {
		table = &r.ztoc.Spans
	}
	if files == nil {
		files = &r.ztoc.TOC
	}
	blob := &fakeBlob{data: r.blob}
	m, err := span.New(span.Options{
		Table: *table, Fetcher: blob, Cache: cache.NewMemory(), Decompressor: decompressor{r.ztoc, alter},
		CacheKey: digest.FromBytes(r.blob).String(), KeepCompressed: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return Layer{
		Key: key, Digest: digest.FromBytes(r.blob), Table: *table, Blob: blob, Spans: managed{m.Loader(), m},
		ZTOC: r.zdgst, Files: files, Gzip: r.ztoc.Gzip(),
	}
}

// runLayer completes l on a fresh scheduler over stateDir and returns its
// observer and its result.
func runLayer(t *testing.T, stateDir string, l Layer) (*fakeObserver, error) {
	t.Helper()
	res, obs := newResults(), &fakeObserver{}
	s := newTestScheduler(Options{StateDir: stateDir, Observer: obs, ChunkSize: 100 << 10}, res.onDone)
	defer s.Close()
	if !s.Enqueue(context.Background(), l) {
		t.Fatal("not queued")
	}
	return obs, res.wait(t, l.Key)
}

func TestCrossCheckHonestLayer(t *testing.T) {
	for _, gz := range []bool{true, false} {
		t.Run(map[bool]string{true: "gzip", false: "tar"}[gz], func(t *testing.T) {
			r := newRealLayer(t, gz)
			dir := t.TempDir()
			l := r.layer(t, "/mnt/honest", nil, nil, -1)
			obs, err := runLayer(t, dir, l)
			if err != nil {
				t.Fatalf("honest layer: %v", err)
			}
			if obs.layers != 1 || len(obs.failures) != 0 {
				t.Errorf("observer: %d layers, failures %v", obs.layers, obs.failures)
			}
			mk := NewMarkers(dir)
			if !mk.verified(l.Digest, l.ZTOC) || mk.Bad(l.Digest, l.ZTOC) != nil {
				t.Error("honest layer not marked verified, or marked bad")
			}
			// The verified marker is per zTOC: another zTOC of the same
			// layer is checked again.
			if mk.verified(l.Digest, digest.FromString("another zTOC")) {
				t.Error("verified marker shared by another zTOC")
			}
		})
	}
}

// TestCrossCheckLyingFileTable: a zTOC whose file table lies about one
// entry fails the layer with ErrZTOCMismatch naming the entry and field,
// counts ztoc_mismatch and marks the layer bad, not verified.
func TestCrossCheckLyingFileTable(t *testing.T) {
	r := newRealLayer(t, true)
	lie := layer.TOC{Entries: slices.Clone(r.ztoc.TOC.Entries)}
	i := slices.IndexFunc(lie.Entries, func(e layer.Entry) bool { return e.Name == "a/small" })
	lie.Entries[i].Mode |= syscall.S_ISUID
	dir := t.TempDir()
	l := r.layer(t, "/mnt/lie", nil, &lie, -1)
	obs, err := runLayer(t, dir, l)
	var m *tarcheck.Mismatch
	if !errors.Is(err, ErrZTOCMismatch) || !errors.As(err, &m) {
		t.Fatalf("want a zTOC mismatch, got %v", err)
	}
	if m.Name != "a/small" || m.Field != tarcheck.FieldMode {
		t.Errorf("mismatch names %q %s, want a/small mode", m.Name, m.Field)
	}
	if obs.layers != 0 || obs.failures["ztoc_mismatch"] != 1 || len(obs.failures) != 1 {
		t.Errorf("observer: %d layers, failures %v", obs.layers, obs.failures)
	}
	mk := NewMarkers(dir)
	bad := mk.Bad(l.Digest, l.ZTOC)
	if !errors.Is(bad, ErrBadLayer) || !strings.Contains(bad.Error(), `"a/small"`) {
		t.Errorf("bad marker: %v", bad)
	}
	if mk.verified(l.Digest, l.ZTOC) {
		t.Error("lying layer marked verified")
	}
}

// readSpan reads span i of l through its span manager, as a container
// would: the span is fetched and inflated from its checkpoint.
func readSpan(t *testing.T, l Layer, i int) {
	t.Helper()
	sp := l.Table.Spans[i]
	if _, err := l.Spans.(managed).m.FetchAt(context.Background(), make([]byte, sp.Len()), sp.UncompressedStart); err != nil {
		t.Fatalf("read span %d: %v", i, err)
	}
}

// TestCrossCheckAlteredSpans: a span a read decompressed into other bytes
// than the real layer's (altered checkpoint data) is caught by comparing
// the span cache with the real stream.
func TestCrossCheckAlteredSpans(t *testing.T) {
	r := newRealLayer(t, true)
	dir := t.TempDir()
	l := r.layer(t, "/mnt/windows", nil, nil, 2)
	readSpan(t, l, 2)
	obs, err := runLayer(t, dir, l)
	if !errors.Is(err, ErrZTOCMismatch) || !strings.Contains(err.Error(), "span 2 ") {
		t.Fatalf("want a zTOC mismatch in span 2, got %v", err)
	}
	if obs.layers != 0 || obs.failures["ztoc_mismatch"] != 1 {
		t.Errorf("observer: %d layers, failures %v", obs.layers, obs.failures)
	}
	if NewMarkers(dir).Bad(l.Digest, l.ZTOC) == nil {
		t.Error("layer not marked bad")
	}
}

// TestSpanLoadFailureNotLocal: a span that does not load (here its zTOC
// digest is wrong, though the blob is right) keeps the layer from being
// reported fully local: ErrSpanLoad, a span_load failure, no marker.
func TestSpanLoadFailureNotLocal(t *testing.T) {
	r := newRealLayer(t, true)
	table := r.ztoc.Spans
	table.Spans = slices.Clone(table.Spans)
	table.Spans[1].Digest = digest.FromString("not span 1")
	dir := t.TempDir()
	l := r.layer(t, "/mnt/load", &table, nil, -1)
	obs, err := runLayer(t, dir, l)
	if !errors.Is(err, ErrSpanLoad) || !errors.Is(err, span.ErrVerification) {
		t.Fatalf("want a span load failure, got %v", err)
	}
	if obs.layers != 0 || obs.failures["span_load"] != 1 || len(obs.failures) != 1 {
		t.Errorf("observer: %d layers, failures %v", obs.layers, obs.failures)
	}
	mk := NewMarkers(dir)
	if mk.verified(l.Digest, l.ZTOC) || mk.Bad(l.Digest, l.ZTOC) != nil {
		t.Error("a layer with a span not loaded got a marker")
	}
}

// TestDigestMismatchNotBad: a blob that does not hash to its digest says
// nothing about the zTOC: a verification failure, no bad marker, even with
// a file table.
func TestDigestMismatchNotBad(t *testing.T) {
	r := newRealLayer(t, true)
	dir := t.TempDir()
	l := r.layer(t, "/mnt/digest", nil, nil, -1)
	bad := slices.Clone(r.blob)
	bad[4] ^= 0xff // gzip header mtime
	l.Blob = &fakeBlob{data: bad}
	obs, err := runLayer(t, dir, l)
	if !errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrZTOCMismatch) {
		t.Fatalf("want a digest mismatch only, got %v", err)
	}
	if obs.failures["verification"] != 1 || len(obs.failures) != 1 {
		t.Errorf("failures %v", obs.failures)
	}
	if NewMarkers(dir).Bad(l.Digest, l.ZTOC) != nil {
		t.Error("marked bad")
	}
}

// TestCancelDuringCrossCheck: canceling a walk with a file table stops it
// (the stream check included) without a result or a marker.
func TestCancelDuringCrossCheck(t *testing.T) {
	r := newRealLayer(t, true)
	dir := t.TempDir()
	l := r.layer(t, "/mnt/cancel", nil, nil, -1)
	second := make(chan struct{})
	calls := 0
	l.Blob.(*fakeBlob).before = func(ctx context.Context, off int64) error {
		if calls++; calls == 2 {
			close(second)
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
	res := newResults()
	s := newTestScheduler(Options{StateDir: dir, ChunkSize: 100 << 10}, res.onDone)
	defer s.Close()
	s.Enqueue(context.Background(), l)
	<-second
	s.Cancel(l.Key) // returns once the worker let go of the layer
	res.mu.Lock()
	_, done := res.errs[l.Key]
	res.mu.Unlock()
	mk := NewMarkers(dir)
	if done || mk.verified(l.Digest, l.ZTOC) || mk.Bad(l.Digest, l.ZTOC) != nil {
		t.Errorf("canceled layer: done %v, markers set", done)
	}
}

// TestOnBadPoisons: a layer found bad is reported to OnBad (before the layer ends)
// with its digest and zTOC, and poisoning its span manager then fails every
// read of it; an honest layer is not reported.
func TestOnBadPoisons(t *testing.T) {
	r := newRealLayer(t, true)
	for _, alter := range []int{-1, 2} {
		l := r.layer(t, "/mnt/onbad", nil, nil, alter)
		if alter >= 0 {
			readSpan(t, l, alter)
		}
		type bad struct{ layer, ztoc digest.Digest }
		var got []bad
		res := newResults()
		s := newTestScheduler(Options{StateDir: t.TempDir(), ChunkSize: 100 << 10,
			OnBad: func(layer, ztoc digest.Digest, reason error) {
				got = append(got, bad{layer, ztoc}) // before the layer ends: wait orders it
				if !errors.Is(reason, ErrZTOCMismatch) {
					t.Errorf("OnBad reason %v", reason)
				}
				l.Spans.(managed).m.Poison(context.Background(), reason)
			}}, res.onDone)
		if !s.Enqueue(context.Background(), l) {
			t.Fatal("not queued")
		}
		err := res.wait(t, l.Key)
		s.Close()
		if (alter >= 0) != (len(got) == 1) || alter < 0 && err != nil {
			t.Fatalf("alter %d: OnBad calls %v, result %v", alter, got, err)
		}
		if alter < 0 {
			continue
		}
		if got[0] != (bad{l.Digest, l.ZTOC}) {
			t.Errorf("OnBad(%v), want %s %s", got[0], l.Digest, l.ZTOC)
		}
		_, rerr := l.Spans.(managed).m.FetchAt(context.Background(), make([]byte, 10), 0)
		if !errors.Is(rerr, span.ErrLayerBad) {
			t.Errorf("read after OnBad: %v, want ErrLayerBad", rerr)
		}
	}
}

// countingDecompressor counts the spans inflated from their checkpoints.
type countingDecompressor struct {
	span.Decompressor
	n *atomic.Int64
}

func (d countingDecompressor) Decompress(compressed []byte, i int) ([]byte, error) {
	d.n.Add(1)
	return d.Decompressor.Decompress(compressed, i)
}

// TestWalkInflatesOnce: the walk caches the spans no read brought in from
// the layer stream it inflates for its cross-check, without inflating any
// of them again from a checkpoint, and the cache then holds the real
// layer; spans a read cached are still compared.
func TestWalkInflatesOnce(t *testing.T) {
	r := newRealLayer(t, true)
	l := r.layer(t, "/mnt/once", nil, nil, -1)
	var n atomic.Int64
	blob := l.Blob
	m, err := span.New(span.Options{
		Table: l.Table, Fetcher: blob, Cache: cache.NewMemory(), Decompressor: countingDecompressor{r.ztoc, &n},
		CacheKey: l.Digest.String(), KeepCompressed: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	l.Spans = managed{m.Loader(), m}
	readSpan(t, l, 1)
	if n.Load() != 1 {
		t.Fatalf("a read of one span inflated %d spans", n.Load())
	}
	if _, err := runLayer(t, t.TempDir(), l); err != nil {
		t.Fatalf("walk: %v", err)
	}
	if got := n.Load(); got != 1 {
		t.Errorf("the walk inflated %d spans from checkpoints, want none", got-1)
	}
	zr, err := gzip.NewReader(bytes.NewReader(r.blob))
	if err != nil {
		t.Fatal(err)
	}
	tarball, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(tarball))
	if _, err := m.FetchAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 1 || !bytes.Equal(got, tarball) {
		t.Errorf("after the walk: %d inflates, layer equal: %v", n.Load(), bytes.Equal(got, tarball))
	}
}

// TestCrossCheckAlteredWindow: a zTOC whose checkpoint window for a span
// differs from the 32 KiB of the layer before it is caught by the walk,
// even though no read inflated that span.
func TestCrossCheckAlteredWindow(t *testing.T) {
	r := newRealLayer(t, true)
	table := r.ztoc.Spans
	table.Spans = slices.Clone(table.Spans)
	if !table.Spans[3].HasWindow {
		t.Fatal("span 3 has no window")
	}
	table.Spans[3].Window[0] ^= 1
	dir := t.TempDir()
	l := r.layer(t, "/mnt/window", &table, nil, -1)
	_, err := runLayer(t, dir, l)
	if !errors.Is(err, ErrZTOCMismatch) || !strings.Contains(err.Error(), "span 3 ") || !strings.Contains(err.Error(), "window") {
		t.Fatalf("want a window mismatch in span 3, got %v", err)
	}
	if NewMarkers(dir).Bad(l.Digest, l.ZTOC) == nil {
		t.Error("layer not marked bad")
	}
}

// TestReadOfPendingSpanWhileWalkWaits: the inflater of the stream check
// holds the end of a deflate block back until it decodes more, so the last
// span of the chunk fed last waits for the next chunk. When a read waits
// for that span while the walk waits for reads to end, the walk loads it
// from its checkpoint first: neither waits for the other.
func TestReadOfPendingSpanWhileWalkWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRealLayer(t, true)
		l := r.layer(t, "/mnt/pending", nil, nil, -1)
		m := l.Spans.(managed).m
		res := newResults()
		var s *Scheduler
		var once sync.Once
		// A read starts waiting while the first chunk is on its way.
		l.Blob = &fakeBlob{data: r.blob, before: func(context.Context, int64) error {
			once.Do(s.BeginDemand)
			return nil
		}}
		const chunk = 200 << 10
		s = newTestScheduler(Options{ChunkSize: chunk, Workers: 1}, res.onDone)
		defer s.Close()
		if !s.Enqueue(context.Background(), l) {
			t.Fatal("not queued")
		}
		synctest.Wait() // the first chunk fed, the walk waiting for reads to end
		k := l.Table.Run(0, len(l.Table.Spans)-1, chunk, span.UncompressedBytes)
		sp := l.Table.Spans[k]
		read := make(chan error, 1)
		go func() {
			_, err := m.FetchAt(context.Background(), make([]byte, sp.Len()), sp.UncompressedStart)
			read <- err
		}()
		synctest.Wait()
		select {
		case err := <-read:
			if err != nil {
				t.Fatalf("read span %d: %v", k, err)
			}
		default:
			t.Fatalf("a read of span %d, the last of the chunk fed, waits for a walk that waits for it", k)
		}
		s.EndDemand()
		if err := res.wait(t, l.Key); err != nil {
			t.Fatalf("walk: %v", err)
		}
	})
}
