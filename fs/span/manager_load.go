package span

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/log"
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
	if m.closed || m.poisoned != nil {
		err := cmp.Or(m.poisoned, ErrClosed)
		m.mu.Unlock()
		return fmt.Errorf("load spans %d-%d of %s: %w", first, last, m.key, err)
	}
	var mine []int
	for i := first; i <= last; i++ {
		switch {
		case m.calls[i] != nil && m.calls[i].reserved:
			mine = append(mine, i) // reserved by the caller
		case m.state[i] != cached && m.calls[i] == nil:
			m.calls[i] = &call{done: make(chan struct{})}
			mine = append(mine, i)
		}
	}
	m.mu.Unlock()
	var firstErr error
	for _, i := range mine {
		s := spans[i]
		data, stored, err := m.load(ctx, i, compressed[s.CompressedStart-base:s.CompressedEnd-base])
		m.finish(i, data, err, stored)
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// errReleased completes the calls of spans a background walk reserved and
// then gave up; their readers fetch the span themselves.
var errReleased = errors.New("span reservation released")

// Reserve marks spans first, first+1, ... up to last as being fetched by
// the caller (a background walk about to fetch them in one request), so
// that reads of them wait for its Load instead of fetching the same bytes
// again. It stops at the first span that is cached or already being
// fetched, and returns the last span reserved, or first-1 when none was.
// Every reserved span must be completed by Load or Release.
func (m *Manager) Reserve(ctx context.Context, first, last int) int {
	if first < 0 || last >= len(m.table.Spans) || first > last {
		return first - 1
	}
	m.probe(ctx, first, last)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.poisoned != nil {
		return first - 1
	}
	i := first
	for ; i <= last && m.state[i] != cached && m.calls[i] == nil; i++ {
		m.calls[i] = &call{done: make(chan struct{}), reserved: true}
	}
	return i - 1
}

// Release gives up the reservations of spans [first, last] that Load has
// not completed: readers waiting for them fetch them themselves.
func (m *Manager) Release(first, last int) {
	m.mu.Lock()
	var gone []*call
	for i := max(first, 0); i <= last && i < len(m.calls); i++ {
		if c := m.calls[i]; c != nil && c.reserved {
			m.calls[i] = nil
			gone = append(gone, c)
		}
	}
	m.mu.Unlock()
	for _, c := range gone {
		c.err = errReleased
		close(c.done)
	}
}

// Complete reports whether every span of the layer is in the cache, asking
// the cache about spans this Manager has not seen yet (one small read each).
func (m *Manager) Complete(ctx context.Context) bool {
	m.probe(ctx, 0, len(m.table.Spans)-1)
	spans, total := m.Cached()
	return spans == total
}

// Has reports whether span i is cached or being fetched by a reader, so a
// background walk need not fetch it again.
func (m *Manager) Has(ctx context.Context, i int) bool {
	m.probe(ctx, i, i)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state[i] == cached || m.calls[i] != nil
}

// compressedKey is the cache key of span i's compressed bytes.
func (m *Manager) compressedKey(i int) string {
	return m.key + "/z/" + strings.TrimPrefix(m.keys[i], m.key+"/")
}

// keepCompressed caches the verified compressed bytes of span i when the
// Manager keeps them; failing to is harmless (the walk fetches it again).
func (m *Manager) keepCompressed(ctx context.Context, i int, compressed []byte) {
	if !m.keepZ {
		return
	}
	if err := m.cache.Put(m.compressedKey(i), compressed); err != nil {
		log.G(ctx).WithError(err).WithField("span", i).Debug("cannot keep compressed span")
	}
}

// Compressed returns the compressed bytes of span i kept by a read's fetch,
// verified again against the span digest; ok is false when none are kept.
func (m *Manager) Compressed(ctx context.Context, i int) ([]byte, bool) {
	if !m.keepZ {
		return nil, false
	}
	data, err := m.cache.Get(m.compressedKey(i))
	if err != nil || m.table.Spans[i].Digest.Algorithm().FromBytes(data) != m.table.Spans[i].Digest {
		return nil, false
	}
	return data, true
}

// DropCompressed forgets the compressed copies kept for the background
// walk, once it has hashed the blob.
func (m *Manager) DropCompressed(ctx context.Context) {
	if !m.keepZ {
		return
	}
	if err := m.cache.Remove(m.key + "/z"); err != nil {
		log.G(ctx).WithError(err).Debug("cannot drop compressed spans")
	}
}
