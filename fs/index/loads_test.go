package index

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
)

// loadBudgetStore returns a Store whose budget of zTOC loads in progress
// holds one load of data but not two, and data's estimate.
func loadBudgetStore(t *testing.T) (*Store, []byte, int64) {
	t.Helper()
	data := synthZTOC(t, 64<<10, 1<<20, synthFiles(100, 10, 0, 0))
	est, err := checkFlatbuffer(data, Limits{MaxZTOCHeapBytes: 1 << 40}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Root: t.TempDir(), Registry: newFakeRegistry(), Limits: Limits{MaxZTOCHeapBytes: est + est/2}})
	if err != nil {
		t.Fatal(err)
	}
	return s, data, est
}

// waitQueued returns once a load is queued on the budget behind the one
// holding it (which leaves room for one byte more: a TryAcquire(1) fails
// only when a waiter is queued), or fails t if entered receives first.
func waitQueued(t *testing.T, s *Store, entered <-chan int64) {
	t.Helper()
	for {
		select {
		case <-entered:
			t.Fatal("a second load started while the first held the budget; together they exceed it")
		default:
		}
		if !s.loads.TryAcquire(1) {
			return
		}
		s.loads.Release(1)
		runtime.Gosched()
	}
}

// TestLoadBudgetSerializes: two zTOC loads whose estimates together exceed
// limits.max_ztoc_heap_bytes run one after the other, and the budget is
// whole again afterwards.
func TestLoadBudgetSerializes(t *testing.T) {
	s, data, est := loadBudgetStore(t)
	entered := make(chan int64, 2)
	proceed := make(chan struct{})
	var mu sync.Mutex
	active, overlap := 0, false
	s.loading = func(n int64) {
		if n != est {
			t.Errorf("load took %d bytes of the budget, want its estimate %d", n, est)
		}
		mu.Lock()
		active++
		overlap = overlap || active > 1
		mu.Unlock()
		entered <- n
		<-proceed
		mu.Lock()
		active--
		mu.Unlock()
	}
	errs := make(chan error, 2)
	load := func() {
		l, err := s.parseZTOC(context.Background(), data)
		if err == nil {
			l.Close()
		}
		errs <- err
	}
	go load()
	<-entered
	go load()
	waitQueued(t, s, entered)
	close(proceed)
	<-entered
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if overlap {
		t.Error("the loads overlapped")
	}
	if !s.loads.TryAcquire(s.lim.MaxZTOCHeapBytes) {
		t.Error("the budget was not given back")
	}
}

// TestLoadBudgetCancel: a load waiting for the budget returns the caller's
// cancellation, takes nothing from the budget, and later loads proceed.
func TestLoadBudgetCancel(t *testing.T) {
	s, data, _ := loadBudgetStore(t)
	entered := make(chan int64, 2)
	proceed := make(chan struct{})
	s.loading = func(n int64) {
		entered <- n
		<-proceed
	}
	first := make(chan error, 1)
	go func() {
		l, err := s.parseZTOC(context.Background(), data)
		if err == nil {
			l.Close()
		}
		first <- err
	}()
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	second := make(chan error, 1)
	go func() {
		_, err := s.parseZTOC(ctx, data)
		second <- err
	}()
	waitQueued(t, s, entered)
	cancel()
	if err := <-second; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled load: got %v, want context.Canceled", err)
	}
	close(proceed)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	l, err := s.parseZTOC(context.Background(), data)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if !s.loads.TryAcquire(s.lim.MaxZTOCHeapBytes) {
		t.Error("the budget was not given back")
	}
}
