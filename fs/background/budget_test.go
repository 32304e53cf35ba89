package background

import (
	"context"
	"errors"
	"slices"
	"syscall"
	"testing"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
)

func TestBudgetWaitsForRoom(t *testing.T) {
	b := newBudget(10)
	ctx := context.Background()
	if err := b.acquire(ctx, 25); err != nil { // alone: goes although larger
		t.Fatal(err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.acquire(canceled, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("acquire over the budget: %v, want to wait", err)
	}
	got := make(chan error)
	go func() { got <- b.acquire(ctx, 6) }()
	b.release(25)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if err := b.acquire(canceled, 5); !errors.Is(err, context.Canceled) {
		t.Fatalf("6 + 5 of 10: %v, want to wait", err)
	}
	if err := b.acquire(ctx, 4); err != nil {
		t.Fatal(err)
	}
	h := &chunkHold{b: b, n: 10}
	h.refs.Store(2)
	h.walkDone()
	h.walkDone() // once
	if b.inUse() != 10 {
		t.Fatalf("in use %d after one holder let go", b.inUse())
	}
	h.streamDone()
	if b.inUse() != 0 {
		t.Fatalf("in use %d after both let go", b.inUse())
	}
}

// TestWalkReturnsItsBudget: walks of an honest layer and of one whose file
// table lies (the check stops early, chunks fed after it are dropped), with
// a budget smaller than one chunk, finish and give back every byte.
func TestWalkReturnsItsBudget(t *testing.T) {
	r := newRealLayer(t, true)
	lie := layer.TOC{Entries: slices.Clone(r.ztoc.TOC.Entries)}
	i := slices.IndexFunc(lie.Entries, func(e layer.Entry) bool { return e.Name == "a/small" })
	lie.Entries[i].Mode |= syscall.S_ISUID
	for _, tc := range []struct {
		name  string
		files *layer.TOC
		want  error
	}{{"honest", nil, nil}, {"lying", &lie, ErrZTOCMismatch}} {
		t.Run(tc.name, func(t *testing.T) {
			l := r.layer(t, "/mnt/"+tc.name, nil, tc.files, -1)
			res := newResults()
			s := newTestScheduler(Options{StateDir: t.TempDir(), ChunkSize: 100 << 10, MaxMemory: 1}, res.onDone)
			defer s.Close()
			if !s.Enqueue(context.Background(), l) {
				t.Fatal("not queued")
			}
			if err := res.wait(t, l.Key); !errors.Is(err, tc.want) {
				t.Fatalf("layer: %v, want %v", err, tc.want)
			}
			if n := s.mem.inUse(); n != 0 {
				t.Errorf("%d bytes of the budget still held", n)
			}
		})
	}
}

// A chunk's buffer is reused once both holders let go, only while the
// bytes held and the free buffers fit the budget, and trim drops them.
func TestBudgetRecyclesBuffers(t *testing.T) {
	ctx := context.Background()
	b := newBudget(4 * bufRound)
	h1, err := b.hold(ctx, bufRound-10)
	if err != nil {
		t.Fatal(err)
	}
	buf := h1.bytes(bufRound - 20)
	if len(buf) != bufRound-20 || cap(buf) != bufRound {
		t.Fatalf("len %d cap %d", len(buf), cap(buf))
	}
	buf[0] = 7
	h1.walkDone()
	if got := b.buffer(100); &got[:1][0] == &buf[0] {
		t.Fatal("a buffer still held by the check was handed out again")
	}
	h1.streamDone()
	h2, err := b.hold(ctx, bufRound-5)
	if err != nil {
		t.Fatal(err)
	}
	if got := h2.bytes(bufRound - 5); &got[0] != &buf[0] {
		t.Fatal("the free buffer was not reused")
	}
	// A buffer that does not fit beside the bytes held is dropped.
	big, err := b.hold(ctx, 3*bufRound)
	if err != nil {
		t.Fatal(err)
	}
	big.bytes(3 * bufRound)
	h2.walkDone()
	h2.streamDone() // held: 3 MiB of 4; the 1 MiB buffer still fits
	big.walkDone()
	big.streamDone() // 1 + 3 MiB free: fits exactly
	if b.freeBytes != 4*bufRound || b.inUse() != 0 {
		t.Fatalf("free %d, in use %d", b.freeBytes, b.inUse())
	}
	h3, _ := b.hold(ctx, 2*bufRound)
	h3.bytes(2 * bufRound) // takes the 3 MiB one: 1 MiB free, 2 held
	h4, _ := b.hold(ctx, bufRound)
	h4.bytes(bufRound) // takes the 1 MiB one
	if err := b.acquire(ctx, 10); err != nil {
		t.Fatal(err)
	}
	h5 := &chunkHold{b: b, n: 10, buf: make([]byte, 10, 2*bufRound)}
	h5.refs.Store(1)
	h5.walkDone() // 3 held + 2 would exceed 4: dropped
	if b.freeBytes != 0 {
		t.Fatalf("free %d after a buffer beyond the budget", b.freeBytes)
	}
	h3.walkDone()
	h3.streamDone()
	if b.freeBytes != 3*bufRound {
		t.Fatalf("free %d", b.freeBytes)
	}
	b.trim()
	if b.freeBytes != 0 || len(b.free) != 0 {
		t.Fatalf("trim left %d bytes", b.freeBytes)
	}
}
