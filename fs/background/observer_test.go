package background

import (
	"context"
	"sync"
	"testing"
	"time"
)

// layerObserver is a fakeObserver that also implements LayerObserver.
type layerObserver struct {
	fakeObserver
	mu      sync.Mutex
	fetched map[string]time.Duration
	full    int
}

func (o *layerObserver) LayerFetched(layer string, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fetched == nil {
		o.fetched = map[string]time.Duration{}
	}
	o.fetched[layer] = took
}

func (o *layerObserver) QueueFull() { o.mu.Lock(); o.full++; o.mu.Unlock() }

// An Observer that is also a LayerObserver learns which layer was
// completed, and each layer the full queue had no room for.
func TestLayerObserver(t *testing.T) {
	b := newTestBlob(t, 1, 300<<10, 3)
	res, obs := newResults(), &layerObserver{}
	s := New(Options{OnDone: res.onDone, Observer: obs})
	defer s.Close()
	l, _ := layerOf("/mnt/a", b, &fakeBlob{data: b.blob})
	s.Enqueue(context.Background(), l, Background)
	if err := res.wait(t, "/mnt/a"); err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	if _, ok := obs.fetched[b.digest.String()]; !ok || len(obs.fetched) != 1 {
		t.Errorf("LayerFetched calls %v, want one for %s", obs.fetched, b.digest)
	}
	obs.mu.Unlock()

	for _, dropOldest := range []bool{false, true} {
		obs := &layerObserver{}
		s := New(Options{Delay: time.Hour, MaxQueue: 1, DropOldest: dropOldest, Observer: obs})
		for _, key := range []string{"/mnt/1", "/mnt/2", "/mnt/3"} {
			l, _ := layerOf(key, b, &fakeBlob{data: b.blob})
			s.Enqueue(context.Background(), l, Background)
		}
		if got := s.Queued(); got != 1 {
			t.Errorf("drop oldest %v: Queued() = %d, want 1", dropOldest, got)
		}
		s.Close()
		if obs.full != 2 {
			t.Errorf("drop oldest %v: QueueFull %d times, want 2", dropOldest, obs.full)
		}
	}
}
