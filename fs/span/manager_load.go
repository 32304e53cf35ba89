package span

import (
	"context"
	"fmt"
)

// Load makes spans [first, last] local from compressed bytes the caller
// already fetched: compressed holds blob[base : base+len(compressed)] and
// must cover every span in the range. It is the background fetcher's way in:
// it reads the blob in order itself (to hash the whole layer) and hands the
// bytes over instead of having them fetched twice.
//
// Each span is verified, decompressed and cached exactly as a fetched one.
// Spans already cached or being fetched by a reader are skipped; readers
// that ask for a span while Load works on it wait for Load. It returns the
// first span's error, after trying all of them.
func (m *Manager) Load(ctx context.Context, first, last int, compressed []byte, base int64) error {
	if first < 0 || last >= len(m.table.Spans) || first > last {
		return fmt.Errorf("load spans %d-%d of %s: out of range", first, last, m.key)
	}
	spans := m.table.Spans
	if base > spans[first].CompressedStart || base+int64(len(compressed)) < spans[last].CompressedEnd {
		return fmt.Errorf("load spans %d-%d of %s: bytes [%d, %d) do not cover [%d, %d)", first, last, m.key,
			base, base+int64(len(compressed)), spans[first].CompressedStart, spans[last].CompressedEnd)
	}
	m.probe(ctx, first, last)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("load spans %d-%d of %s: %w", first, last, m.key, ErrClosed)
	}
	var mine []int
	for i := first; i <= last; i++ {
		if m.state[i] != cached && m.calls[i] == nil {
			m.calls[i] = &call{done: make(chan struct{})}
			mine = append(mine, i)
		}
	}
	m.mu.Unlock()
	var firstErr error
	for _, i := range mine {
		s := spans[i]
		data, err := m.load(ctx, i, compressed[s.CompressedStart-base:s.CompressedEnd-base])
		stored := false
		if err == nil {
			stored = m.store(ctx, i, data)
		}
		m.finish(i, data, err, stored)
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// Complete reports whether every span of the layer is in the cache, asking
// the cache about spans this Manager has not seen yet (one small read each).
func (m *Manager) Complete(ctx context.Context) bool {
	m.probe(ctx, 0, len(m.table.Spans)-1)
	spans, total := m.Cached()
	return spans == total
}
