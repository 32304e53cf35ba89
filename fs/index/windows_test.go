package index

import (
	"bytes"
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// openFixtureLayer opens the fixture's layer through a store on root.
func openFixtureLayer(t *testing.T, f *discoveryFixture, root string) (*Store, *Layer) {
	t.Helper()
	ctx := context.Background()
	s := newStore(t, root, f.reg, false, true)
	idx, err := s.Find(ctx, testRef, f.manifest.Digest, "")
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Open(ctx, testRef, idx, f.layer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return s, l
}

// TestWindowsFromStoreFile: a Layer opened through the store reads its
// checkpoint windows from the zTOC's file, which it keeps open (removing
// the name changes nothing), and a window changed in the file since it was
// verified fails the span's inflate instead of giving wrong bytes.
func TestWindowsFromStoreFile(t *testing.T) {
	f := newDiscoveryFixture(t)
	s, l := openFixtureLayer(t, f, t.TempDir())
	if _, ok := l.windows.(*fileWindows); !ok {
		t.Fatalf("windows read from %T, want the zTOC file", l.windows)
	}
	if len(l.Spans.Spans) < 3 {
		t.Fatalf("want at least 3 spans, have %d", len(l.Spans.Spans))
	}
	decompress := func(i int) ([]byte, error) {
		sp := l.Spans.Spans[i]
		return l.Decompress(f.layerBlb[sp.CompressedStart:sp.CompressedEnd], i)
	}
	check := func(what string) {
		t.Helper()
		for i, sp := range l.Spans.Spans {
			out, err := decompress(i)
			if err != nil {
				t.Fatalf("%s: span %d: %v", what, i, err)
			}
			if !bytes.Equal(out, f.layerTar[sp.UncompressedStart:sp.UncompressedEnd]) {
				t.Fatalf("%s: span %d: wrong bytes", what, i)
			}
		}
	}
	check("opened")

	p, err := s.blobPath(f.ztoc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	check("name removed")

	// Alter the window of checkpoint 2 in the open file.
	off, n, err := checkpointsAt(data)
	if err != nil {
		t.Fatal(err)
	}
	first, err := blobFirst(n, len(l.Spans.Spans))
	if err != nil {
		t.Fatal(err)
	}
	// The name is gone: write through /proc to the file the Layer holds.
	w := l.windows.(*fileWindows)
	fd, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(int(w.f.Fd())), os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("cannot write to the open zTOC file: %v", err)
	}
	if _, err := fd.WriteAt(bytes.Repeat([]byte("hostile!"), 8), off+checkpointWindowAt(2, first)+100); err != nil {
		t.Fatal(err)
	}
	fd.Close()
	if _, err := decompress(2); err == nil || !strings.Contains(err.Error(), "changed since the zTOC was verified") {
		t.Fatalf("span 2 with an altered window: %v, want the window refused", err)
	}
	if _, err := decompress(1); err != nil {
		t.Fatalf("span 1, window intact: %v", err)
	}
}

// TestOpenLayerHeap: an open Layer keeps neither the zTOC's bytes nor a
// decoded copy of its checkpoint windows on the heap (they are read from
// the file when a span is inflated): what it retains is far below the
// size of its checkpoint blob. A guard for memory, not a timing.
func TestOpenLayerHeap(t *testing.T) {
	tl := newTestLayer(t, 8<<20, 32<<10)
	f := newDiscoveryFixtureOf(t, tl)
	_, n, err := checkpointsAt(tl.ztocData)
	if err != nil {
		t.Fatal(err)
	}
	if n < 4<<20 {
		t.Fatalf("checkpoint blob of %d bytes, want a large one", n)
	}
	root := t.TempDir()
	live := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := live()
	_, l := openFixtureLayer(t, f, root)
	after := live()
	runtime.KeepAlive(l)
	runtime.KeepAlive(tl)
	runtime.KeepAlive(f)
	retained := int64(after) - int64(before)
	t.Logf("checkpoint blob %d bytes, %d spans; heap retained by the open layer %d bytes", n, len(l.Spans.Spans), retained)
	if retained > int64(n)/4 {
		t.Errorf("the open layer retains %d bytes of heap, more than a quarter of its %d-byte checkpoint blob", retained, n)
	}
}
