package span

import (
	"sort"
	"sync"
)

// neighbours is the policy that anticipates a program reading scattered
// files of a layer one after another (an interpreter loading its modules,
// each import a read that waits for the registry): once the layer's reads
// have missed the cache at two places apart, every later miss also fetches
// the spans within Options.Neighbours compressed bytes on either side of
// it. A single miss (a container reading one file of a large layer) fetches
// nothing more; misses next to each other are a sequential run, which the
// read-ahead policy follows. Like readAhead it fetches nothing itself. It
// is safe for concurrent use.
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

// next notes a read of spans [first, last] of t that missed the cache and
// returns the spans [from, to] around it to fetch (from > to: none).
func (n *neighbours) next(t Table, first, last int) (from, to int) {
	if n.max <= 0 {
		return 0, -1
	}
	n.mu.Lock()
	if n.lo <= n.hi && (first > n.hi+1 || last < n.lo-1) {
		n.scattered = true
	}
	n.lo, n.hi = first, last
	scattered := n.scattered
	n.mu.Unlock()
	if !scattered {
		return 0, -1
	}
	lo := t.Spans[first].CompressedStart - n.max
	hi := t.Spans[last].CompressedEnd + n.max
	from = sort.Search(len(t.Spans), func(k int) bool { return t.Spans[k].CompressedEnd > lo })
	to = sort.Search(len(t.Spans), func(k int) bool { return t.Spans[k].CompressedStart >= hi }) - 1
	return from, to
}
