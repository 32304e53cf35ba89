package span

import (
	"slices"
	"testing"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

// TestNeighboursScattered: a single miss fetches only its span; once reads
// have missed at two places apart, the spans next to both misses come, and
// then those next to each later miss, each once.
func TestNeighboursScattered(t *testing.T) {
	l := buildLayer(t, 41, []int{1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000}, false)
	f := &fakeFetcher{blob: l.blob}
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) {
		o.Neighbours = 1 // the span on either side
		o.ReadAheadRequest = 1
	})
	p := make([]byte, 100)
	read := func(off int64, want []int) {
		t.Helper()
		if n, err := m.FetchAt(t.Context(), p, off); n != len(p) || err != nil {
			t.Fatalf("FetchAt(%d) = %d, %v", off, n, err)
		}
		m.c.wg.Wait()
		if got := f.fetchesPerSpan(l.table); !slices.Equal(got, want) {
			t.Errorf("after a read at %d: fetches per span = %v, want %v", off, got, want)
		}
	}
	read(6000, []int{0, 0, 0, 0, 0, 0, 1, 0})
	read(2000, []int{0, 1, 1, 1, 0, 1, 1, 1}) // apart from span 6: scattered, around both
	read(3000, []int{0, 1, 1, 1, 0, 1, 1, 1}) // cached
	read(4500, []int{0, 1, 1, 1, 1, 1, 1, 1}) // a miss: 3 and 5 next to it are cached
}

// TestNeighboursAdjacent: misses next to each other (a sequential reader)
// or a single one fetch no neighbours; without Neighbours nothing is.
func TestNeighboursAdjacent(t *testing.T) {
	for _, c := range []struct {
		name       string
		neighbours int64
		offs       []int64
		want       []int
	}{
		{"sequential", 1, []int64{0, 1000, 2000}, []int{1, 1, 1, 0, 0, 0}},
		{"single", 1 << 20, []int64{3000, 3500}, []int{0, 0, 0, 1, 0, 0}},
		{"off", 0, []int64{0, 4000, 2000}, []int{1, 0, 1, 0, 1, 0}},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := buildLayer(t, 42, []int{1000, 1000, 1000, 1000, 1000, 1000}, false)
			f := &fakeFetcher{blob: l.blob}
			m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.Neighbours = c.neighbours })
			p := make([]byte, 100)
			for _, off := range c.offs {
				if n, err := m.FetchAt(t.Context(), p, off); n != len(p) || err != nil {
					t.Fatalf("FetchAt(%d) = %d, %v", off, n, err)
				}
			}
			m.c.wg.Wait()
			if got := f.fetchesPerSpan(l.table); !slices.Equal(got, c.want) {
				t.Errorf("fetches per span = %v, want %v", got, c.want)
			}
		})
	}
}

// TestNeighboursAfterDemand: the neighbours of a miss are asked for only
// once the read's own span has arrived (demand first on a shared link).
func TestNeighboursAfterDemand(t *testing.T) {
	l := buildLayer(t, 43, []int{1000, 1000, 1000, 1000, 1000, 1000}, false)
	f := &fakeFetcher{blob: l.blob}
	begun := make(beginSignal, 8)
	m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.Neighbours = 1; o.ReadAheadRequest = 1; o.Demand = begun })
	p := make([]byte, 100)
	if _, err := m.FetchAt(t.Context(), p, 0); err != nil {
		t.Fatal(err)
	}
	<-begun // that read's demand
	gate := make(chan struct{})
	f.set(func(f *fakeFetcher) { f.gate = gate })
	done := make(chan error, 1)
	go func() {
		_, err := m.FetchAt(t.Context(), p, 3000)
		done <- err
	}()
	<-begun // the first demand: the read waiting for span 3
	m.c.mu.Lock()
	early := m.c.calls[1] != nil || m.c.calls[2] != nil || m.c.calls[4] != nil
	m.c.mu.Unlock()
	if early {
		t.Error("neighbours of the miss were asked for before the read had its span")
	}
	close(gate) // begun has room for the neighbours' demands
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	m.c.wg.Wait()
	if got := f.fetchesPerSpan(l.table); !slices.Equal(got, []int{1, 1, 1, 1, 1, 0}) {
		t.Errorf("fetches per span = %v, want spans 0-4 (around 0 and 3)", got)
	}
}
