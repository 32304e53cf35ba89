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
	if err := b.acquire(ctx, 25, nil); err != nil { // alone: goes although larger
		t.Fatal(err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.acquire(canceled, 1, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("acquire over the budget: %v, want to wait", err)
	}
	got := make(chan error)
	go func() { got <- b.acquire(ctx, 6, nil) }()
	b.release(25)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if err := b.acquire(canceled, 5, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("6 + 5 of 10: %v, want to wait", err)
	}
	if err := b.acquire(ctx, 4, nil); err != nil {
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
