package linkrate

import (
	"sync"
	"testing"
	"time"
)

func TestMeter(t *testing.T) {
	var m Meter
	if _, ok := m.Rate(); ok || m.Faster(1) {
		t.Fatal("a meter without samples has an estimate")
	}
	m.Observe(MinSample-1, time.Millisecond) // too small
	m.Observe(4<<20, 0)                      // no time
	if _, ok := m.Rate(); ok {
		t.Fatal("ignored samples made an estimate")
	}
	m.Observe(100<<20, time.Second) // 100 MiB/s
	m.Observe(10<<20, time.Second)  // a transfer sharing the link
	if r, _ := m.Rate(); r != 100<<20 {
		t.Fatalf("rate %v, want the fastest recent transfer's %v", r, 100<<20)
	}
	if !m.Faster(50<<20) || m.Faster(100<<20) || m.Faster(0) {
		t.Fatal("Faster disagrees with a rate of 100 MiB/s")
	}
	// The link slows down: once the fast transfer is out of the window,
	// the estimate follows.
	for i := range Window - 2 { // the window holds the fast one and Window-1 slow ones
		m.Observe(10<<20, time.Second)
		if r, _ := m.Rate(); r != 100<<20 {
			t.Fatalf("after %d slow transfers: rate %v, want still %v", i+2, r, 100<<20)
		}
	}
	m.Observe(10<<20, time.Second)
	if r, _ := m.Rate(); r != 10<<20 {
		t.Fatalf("after %d slow transfers: rate %v, want %v", Window, r, 10<<20)
	}
}

func TestMeterConcurrent(t *testing.T) {
	var m Meter
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				m.ObserveGet("range", time.Millisecond, 64<<20) // not counted
				m.ObserveBody("range", time.Second, int64(g+1)<<20)
				m.Faster(1)
			}
		}()
	}
	wg.Wait()
	if r, ok := m.Rate(); !ok || r < 1<<20 || r > 8<<20 {
		t.Fatalf("rate %v, %v: want one of the transfers' rates", r, ok)
	}
}
