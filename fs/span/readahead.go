package span

import (
	"context"
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
	runIdle = 100 * time.Millisecond
)

// readAhead notes the read [off, end) of spans [first, last] and, when it
// continues a sequential run that has crossed a span boundary, starts
// fetching the spans in the ReadAhead bytes after it that are neither
// cached nor being fetched. The spans ahead are fetched in separate
// requests of at most aheadReq compressed bytes, so that they download in
// parallel; nobody waits for them here, and their failures are not the
// reader's (a later read of the span fetches it again).
func (m *Manager) readAhead(ctx context.Context, off, end int64, first, last int) {
	if m.ahead <= 0 {
		return
	}
	m.mu.Lock()
	seq := false
	now := m.now()
	if m.lastEnd > 0 && now.Sub(m.lastAt) < runIdle {
		// A gap of more than a quarter span is a jump, not a run.
		gap := min(seqGap, m.table.Spans[m.table.Find(m.lastEnd-1)].Len()/4)
		seq = off <= m.lastEnd+gap && off >= m.lastEnd-seqBack
	}
	if !seq {
		m.runStart, m.runOff = first, off
	}
	m.lastEnd, m.lastAt = end, now
	start, runOff := m.runStart, m.runOff
	m.mu.Unlock()
	if !seq || last <= start || last+1 >= len(m.table.Spans) {
		return
	}
	// Like the kernel's read-ahead, the window grows with the run: as far
	// ahead as it has read so far, up to ReadAhead. A program that reads
	// one file of a few spans fetches little more than the file.
	ahead := min(m.ahead, end-runOff)
	stop := m.table.Find(min(end+ahead, m.table.UncompressedSize) - 1)
	if stop <= last {
		return
	}
	m.probe(ctx, last+1, stop)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	var fresh []int
	for i := last + 1; i <= stop; i++ {
		if m.state[i] == cached || m.calls[i] != nil || m.recentFailure(i) != nil {
			continue
		}
		m.calls[i] = &call{done: make(chan struct{})}
		fresh = append(fresh, i)
	}
	for len(fresh) > 0 {
		n := 1
		base := m.table.Spans[fresh[0]].CompressedStart
		for n < len(fresh) && fresh[n] == fresh[n-1]+1 && m.table.Spans[fresh[n]].CompressedEnd-base <= m.aheadReq {
			n++
		}
		m.wg.Add(1)
		go m.fetch(fresh[0], fresh[n-1])
		fresh = fresh[n:]
	}
}
