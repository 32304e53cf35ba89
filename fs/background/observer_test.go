package background

import (
	"context"
	"testing"
	"time"
)

// The Observer learns which layer was completed, and each layer the full
// queue had no room for.
func TestObserverLayers(t *testing.T) {
	b := newTestBlob(t, 1, 300<<10, 3)
	res, obs := newResults(), &fakeObserver{}
	s := newTestScheduler(Options{Observer: obs}, res.onDone)
	defer s.Close()
	l, _ := layerOf("/mnt/a", b, &fakeBlob{data: b.blob})
	s.Enqueue(context.Background(), l)
	if err := res.wait(t, "/mnt/a"); err != nil {
		t.Fatal(err)
	}
	obs.mu.Lock()
	if _, ok := obs.fetched[b.digest.String()]; !ok || len(obs.fetched) != 1 {
		t.Errorf("LayerFetched calls %v, want one for %s", obs.fetched, b.digest)
	}
	obs.mu.Unlock()

	for _, dropOldest := range []bool{false, true} {
		obs := &fakeObserver{}
		s := New(Options{Delay: time.Hour, MaxQueue: 1, DropOldest: dropOldest, Observer: obs})
		for _, key := range []string{"/mnt/1", "/mnt/2", "/mnt/3"} {
			l, _ := layerOf(key, b, &fakeBlob{data: b.blob})
			s.Enqueue(context.Background(), l)
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
