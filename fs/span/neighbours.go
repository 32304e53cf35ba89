package span

import (
	"sort"
	"sync"
)

// neighbours is the policy that anticipates a program reading scattered
// files of a layer one after another (an interpreter loading its modules,
// each import a read that waits for the registry): once the layer's reads
// have missed the cache at two places apart, the spans within
// Options.Neighbours compressed bytes on either side of both misses are
// fetched, and then those around every later miss. A single miss (a
// container reading one file of a large layer) fetches nothing more; misses
// next to each other are a sequential run, which the read-ahead policy
// follows. Like readAhead it fetches nothing itself. It is safe for
// concurrent use.
type neighbours struct {
	max int64 // Options.Neighbours; 0: none

	mu sync.Mutex
	// lo, hi are the spans of the previous miss (lo > hi: none yet);
	// scattered is set once a miss was not next to the previous one.
	lo, hi    int
	scattered bool
}

func newNeighbours(opts Options) *neighbours {
	return &neighbours{max: opts.Neighbours, lo: 0, hi: -1}
}

// spanRange is the spans [from, to] (from > to: none).
type spanRange struct{ from, to int }

// next notes a read of spans [first, last] of t that missed the cache and
// returns the span ranges around it to fetch (none, one, or, when it is
// the miss that shows the reads are scattered, two: around the previous
// miss too).
func (n *neighbours) next(t Table, first, last int) []spanRange {
	if n.max <= 0 {
		return nil
	}
	n.mu.Lock()
	prevLo, prevHi, was := n.lo, n.hi, n.scattered
	if n.lo <= n.hi && (first > n.hi+1 || last < n.lo-1) {
		n.scattered = true
	}
	n.lo, n.hi = first, last
	scattered := n.scattered
	n.mu.Unlock()
	if !scattered {
		return nil
	}
	out := []spanRange{n.around(t, first, last)}
	if !was {
		out = append(out, n.around(t, prevLo, prevHi))
	}
	return out
}

// around returns the spans within max compressed bytes of spans [first, last].
func (n *neighbours) around(t Table, first, last int) spanRange {
	lo := t.Spans[first].CompressedStart - n.max
	hi := t.Spans[last].CompressedEnd + n.max
	from := sort.Search(len(t.Spans), func(k int) bool { return t.Spans[k].CompressedEnd > lo })
	to := sort.Search(len(t.Spans), func(k int) bool { return t.Spans[k].CompressedStart >= hi }) - 1
	return spanRange{from, to}
}
