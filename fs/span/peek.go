package span

import "context"

// ReadCached fills p with the cached uncompressed bytes of span i from rel
// bytes into the span and reports whether the cache held all of them. It
// never fetches, reads ahead or counts a read: the background walk compares
// the cached spans with the real layer stream through it.
func (m *Manager) ReadCached(ctx context.Context, i int, p []byte, rel int64) bool {
	if i < 0 || i >= len(m.table.Spans) || rel < 0 || rel > m.table.Spans[i].Len()-int64(len(p)) {
		return false
	}
	m.mu.Lock()
	bad := m.poisoned != nil || m.bad[i] != nil
	m.mu.Unlock()
	if bad {
		return false
	}
	if len(p) == 0 {
		return true
	}
	return m.readCached(ctx, i, p, rel)
}
