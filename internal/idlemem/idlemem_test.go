package idlemem

import (
	"context"
	"runtime/metrics"
	"sync/atomic"
	"testing"
	"time"
)

// fakeTimers hands out the channels Run waits on, so the test fires them.
type fakeTimers struct{ ch chan chan time.Time }

func (f *fakeTimers) after(time.Duration) <-chan time.Time {
	c := make(chan time.Time, 1)
	f.ch <- c
	return c
}

// next is the timer Run armed last (it arms one per wait).
func (f *fakeTimers) next(t *testing.T) chan time.Time {
	t.Helper()
	select {
	case c := <-f.ch:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("Run armed no timer")
		return nil
	}
}

func TestReleaseAfterQuiet(t *testing.T) {
	timers := &fakeTimers{ch: make(chan chan time.Time)}
	var free atomic.Uint64
	released := make(chan struct{}, 10)
	// checks tells when Run ended a quiet period and read free: a Touch
	// sent before that could be taken as activity within the period, and
	// a Store could race the read.
	checks := make(chan struct{}, 10)
	r := New(Options{After: timers.after, Release: func(uint64) { released <- struct{}{} },
		Free: func() uint64 { defer func() { checks <- struct{}{} }(); return free.Load() }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	quiet := func() {
		t.Helper()
		select {
		case <-checks:
		case <-time.After(10 * time.Second):
			t.Fatal("the quiet period did not end")
		}
	}

	free.Store(DefaultMinFree)
	r.Touch()
	first := timers.next(t)
	r.Touch() // activity before the quiet period ends: wait again
	second := timers.next(t)
	first <- time.Time{} // a stale timer is not waited on any more
	second <- time.Time{}
	quiet()
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		t.Fatal("no release after a quiet period")
	}

	// Little free memory: this burst releases nothing.
	free.Store(DefaultMinFree - 1)
	r.Touch()
	timers.next(t) <- time.Time{}
	quiet()
	free.Store(DefaultMinFree)
	r.Touch()
	timers.next(t) <- time.Time{}
	quiet()
	r.Touch()
	timers.next(t) // Run is done with the third burst
	if n := len(released); n != 1 {
		t.Fatalf("%d more releases after two bursts, want 1 (the first had too little free)", n)
	}
}

// TestHeapFree checks the metric's name: an unknown one reads as KindBad,
// which heapFree reports as 0 always.
func TestHeapFree(t *testing.T) {
	s := []metrics.Sample{{Name: freeMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		t.Fatalf("%s: kind %v", freeMetric, s[0].Value.Kind())
	}
}

// TestOnQuietEveryPeriod: OnQuiet runs after each quiet period, also when
// too little is free for Release.
func TestOnQuietEveryPeriod(t *testing.T) {
	timers := &fakeTimers{ch: make(chan chan time.Time)}
	quiet := make(chan struct{}, 10)
	released := make(chan struct{}, 10)
	r := New(Options{After: timers.after, Free: func() uint64 { return 0 },
		Release: func(uint64) { released <- struct{}{} }, OnQuiet: func() { quiet <- struct{}{} }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	for burst := 1; burst <= 2; burst++ {
		r.Touch()
		timers.next(t) <- time.Time{}
		select {
		case <-quiet:
		case <-time.After(10 * time.Second):
			t.Fatalf("burst %d: no OnQuiet after its quiet period", burst)
		}
	}
	r.Touch()
	timers.next(t) // Run is done with the second burst
	if n := len(quiet); n != 0 {
		t.Fatalf("%d OnQuiet calls more than quiet periods", n)
	}
	if n := len(released); n != 0 {
		t.Fatalf("%d releases with nothing free", n)
	}
}

// TestKeepHeap: with KeepHeap a quiet period runs OnQuiet only: the heap
// is neither measured nor released.
func TestKeepHeap(t *testing.T) {
	timers := &fakeTimers{ch: make(chan chan time.Time)}
	quiet := make(chan struct{}, 10)
	var measured, released atomic.Int32
	r := New(Options{After: timers.after, KeepHeap: true, OnQuiet: func() { quiet <- struct{}{} },
		Free: func() uint64 { measured.Add(1); return DefaultMinFree }, Release: func(uint64) { released.Add(1) }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	r.Touch()
	timers.next(t) <- time.Time{}
	select {
	case <-quiet:
	case <-time.After(10 * time.Second):
		t.Fatal("no OnQuiet after the quiet period")
	}
	r.Touch()
	timers.next(t) // Run is done with the first burst
	if m, n := measured.Load(), released.Load(); m != 0 || n != 0 {
		t.Fatalf("heap measured %d times and released %d times, want neither", m, n)
	}
}
