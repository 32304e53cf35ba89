package span

import (
	"sync"
	"time"
)

// Sequential read detection for read-ahead (see Options.ReadAhead): a read
// continues a run when it starts at most seqGap bytes past where the
// previous read ended, or at most seqBack bytes before it (the kernel issues
// a file's read-ahead requests concurrently, so they may arrive slightly out
// of order). Files in a tar are separated by their headers, and a container
// reading every n-th file of a directory skips a few KiB between reads.
const (
	seqGap  int64 = 1 << 20 // and at most a quarter of the span
	seqBack int64 = 1 << 20
	// runIdle ends a run: a streaming reader asks for its next bytes at
	// once, while separate programs (or a program that works between
	// reads) reading neighbouring files are not a stream to get ahead of.
	// It is measured from the end of the previous read (see done): a read
	// that waited for the registry is no pause of its reader.
	runIdle = 100 * time.Millisecond
)

// readAhead is the read-ahead policy of a Manager: it follows the reads of
// the layer and says which spans to fetch ahead of a sequential run. It
// fetches nothing itself (the core does, see core.fetchAhead). It is safe
// for concurrent use.
type readAhead struct {
	max int64 // Options.ReadAhead; 0: no read-ahead
	req int64 // Options.ReadAheadRequest: the longest request ahead
	now func() time.Time

	mu sync.Mutex
	// lastEnd is where the previous read ended (-1: none); runStart is
	// the first span of the current run of sequential reads.
	lastEnd  int64
	runStart int
	runOff   int64     // where the current run began
	lastAt   time.Time // when the previous read came or, later, ended
}

func newReadAhead(opts Options) *readAhead {
	r := &readAhead{max: opts.ReadAhead, req: opts.ReadAheadRequest, now: opts.Now, lastEnd: -1}
	if r.req <= 0 {
		r.req = DefaultReadAheadRequest
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r
}

// next notes the read [off, end) of spans [first, last] of t and, when it
// continues a sequential run that has crossed a span boundary, returns the
// spans [from, to] in the bytes after it to fetch ahead (from > to: none).
// Like the kernel's read-ahead, the window grows with the run: as far ahead
// as it has read so far, up to ReadAhead, so that a program that reads one
// file of a few spans fetches little more than the file.
func (r *readAhead) next(t Table, off, end int64, first, last int) (from, to int) {
	if r.max <= 0 {
		return 0, -1
	}
	r.mu.Lock()
	seq := false
	now := r.now()
	if r.lastEnd > 0 && now.Sub(r.lastAt) < runIdle {
		// A gap of more than a quarter span is a jump, not a run.
		gap := min(seqGap, t.Spans[t.Find(r.lastEnd-1)].Len()/4)
		seq = off <= r.lastEnd+gap && off >= r.lastEnd-seqBack
	}
	if !seq {
		r.runStart, r.runOff = first, off
	}
	r.lastEnd, r.lastAt = end, now
	start, runOff := r.runStart, r.runOff
	r.mu.Unlock()
	if !seq || last <= start || last+1 >= len(t.Spans) {
		return 0, -1
	}
	ahead := min(r.max, end-runOff)
	stop := t.Find(min(end+ahead, t.UncompressedSize) - 1)
	if stop <= last {
		return 0, -1
	}
	return last + 1, stop
}

// done notes that a read has returned: the pause that ends a run is counted
// from then, so that a read that waited for a span fetch (longer than
// runIdle on a slow link) does not end the run it belongs to.
func (r *readAhead) done() {
	if r.max <= 0 {
		return
	}
	now := r.now()
	r.mu.Lock()
	if now.After(r.lastAt) {
		r.lastAt = now
	}
	r.mu.Unlock()
}
