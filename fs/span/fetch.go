package span

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/containerd/log"
)

// plan returns, for each span in [first, last], the shared fetch to wait on,
// or nil when the span is cached. Spans in neither state are marked as being
// fetched and their fetches started, adjacent ones grouped into one request.
// A span too large for the decompression bound fails at once, unfetched.
func (m *Manager) plan(ctx context.Context, first, last int) ([]*call, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if m.poisoned != nil {
		return nil, m.poisoned
	}
	calls := make([]*call, last-first+1)
	var fresh []int
	for i := first; i <= last; i++ {
		if err := m.bad[i]; err != nil {
			calls[i-first] = failedCall(err)
			continue
		}
		if m.state[i] == cached {
			continue
		}
		if err := m.tooLarge(ctx, i); err != nil {
			calls[i-first] = failedCall(err)
			continue
		}
		if m.calls[i] == nil {
			if err := m.recentFailure(i); err != nil {
				calls[i-first] = failedCall(err)
				continue
			}
			m.calls[i] = &call{done: make(chan struct{})}
			fresh = append(fresh, i)
		}
		calls[i-first] = m.calls[i]
	}
	for len(fresh) > 0 {
		n := m.run(fresh)
		m.wg.Add(1)
		go m.fetch(fresh[0], fresh[n-1])
		fresh = fresh[n:]
	}
	return calls, nil
}

// tooLarge refuses span i when its uncompressed length alone exceeds the
// decompression bound, logging the first refusal. Callers hold mu.
func (m *Manager) tooLarge(ctx context.Context, i int) error {
	err := m.limit.check(m.table.Spans[i].Len())
	if err == nil {
		return nil
	}
	if !m.refused[i] {
		if m.refused == nil {
			m.refused = map[int]bool{}
		}
		m.refused[i] = true
		log.G(ctx).WithError(err).WithField("layer", m.key).WithField("span", i).
			Error("span too large to decompress; reads of it fail with EIO")
	}
	return fmt.Errorf("span %d of %s: %w", i, m.key, err)
}

// run returns how many leading spans of fresh (ascending indices) form one
// request: consecutive indices within MaxCoalesce compressed bytes (at least
// one span, however large).
func (m *Manager) run(fresh []int) int {
	start := m.table.Spans[fresh[0]].CompressedStart
	n := 1
	for n < len(fresh) && fresh[n] == fresh[n-1]+1 &&
		m.table.Spans[fresh[n]].CompressedEnd-start <= m.maxCoalesce {
		n++
	}
	return n
}

// invalidate marks span i as missing after the cache lost it.
func (m *Manager) invalidate(i int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setState(i, missing)
}

// setState sets the state of span i and keeps nCached. Callers hold mu
// (or own m exclusively).
func (m *Manager) setState(i int, s state) {
	if m.state[i] == cached {
		m.nCached--
	}
	if s == cached {
		m.nCached++
	}
	m.state[i] = s
}

// probe asks the cache about the spans in [first, last] whose state is
// unknown, so that spans cached by a previous run are not fetched again.
// It reads at most one byte per span and holds no lock while asking.
func (m *Manager) probe(ctx context.Context, first, last int) {
	var todo []int
	m.mu.Lock()
	for i := first; i <= last; i++ {
		if m.state[i] == unknown && m.calls[i] == nil {
			todo = append(todo, i)
		}
	}
	m.mu.Unlock()
	for _, i := range todo {
		s := missing
		if m.inCache(i) {
			s = cached
		}
		m.mu.Lock()
		if m.state[i] == unknown {
			m.setState(i, s)
		}
		m.mu.Unlock()
		if s == cached {
			log.G(ctx).WithField("layer", m.key).WithField("span", i).Trace("span found in cache")
		}
	}
}

// inCache reports whether the cache holds span i with its full length.
func (m *Manager) inCache(i int) bool {
	want := m.table.Spans[i].Len()
	if rc, ok := m.cache.(RangeCache); ok {
		var b [1]byte
		n, _ := rc.GetAt(m.keys[i], b[:], want-1)
		return n == 1
	}
	data, err := m.cache.Get(m.keys[i])
	return err == nil && int64(len(data)) == want
}

// fetch is the shared fetch of spans [first, last] in one range request. It
// runs under the Manager's lifecycle plus FetchTimeout, never under a
// reader's context, and completes every span's call.
func (m *Manager) fetch(first, last int) {
	defer m.wg.Done()
	ctx, cancel := context.WithTimeout(m.life, m.timeout)
	defer cancel()
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("layer", m.key))

	spans := m.table.Spans
	base := spans[first].CompressedStart
	buf := make([]byte, spans[last].CompressedEnd-base)
	err := m.fetchParts(ctx, buf, base)
	if err != nil {
		err = fmt.Errorf("fetch spans %d-%d of %s: %w", first, last, m.key, err)
	}
	for i := first; i <= last; i++ {
		if err == nil && ctx.Err() != nil { // Close or the timeout stops the remaining work
			err = fmt.Errorf("fetch span %d of %s: %w", i, m.key, ctx.Err())
		}
		if err != nil {
			m.finish(i, nil, err, false)
			continue
		}
		s := spans[i]
		compressed := buf[s.CompressedStart-base : s.CompressedEnd-base]
		data, stored, serr := m.load(ctx, i, compressed)
		for r := 0; r < m.retries && errors.Is(serr, ErrVerification) && ctx.Err() == nil; r++ {
			// Options.VerifyRetries: fetch the span alone again. A
			// failed fetch ends the retries (the client retried it).
			again := make([]byte, len(compressed))
			if err := fetchFull(ctx, m.fetcher, again, s.CompressedStart); err != nil {
				break
			}
			compressed = again
			data, stored, serr = m.load(ctx, i, compressed)
		}
		if serr == nil {
			m.keepCompressed(ctx, i, compressed)
		}
		m.finish(i, data, serr, stored)
	}
}

// fetchParts fills buf from the fetcher at off, in parallel requests when
// the Manager splits large fetches (see Options.SplitRequest).
func (m *Manager) fetchParts(ctx context.Context, buf []byte, off int64) error {
	n := int64(len(buf))
	parts := 1
	if m.split > 0 && n > m.split {
		parts = int(min(int64(m.maxSplit), (n+m.split-1)/m.split))
	}
	if parts == 1 {
		return fetchFull(ctx, m.fetcher, buf, off)
	}
	size := (n + int64(parts) - 1) / int64(parts)
	errs := make(chan error, parts)
	for lo := int64(0); lo < n; lo += size {
		hi := min(lo+size, n)
		go func() { errs <- fetchFull(ctx, m.fetcher, buf[lo:hi], off+lo) }()
	}
	var first error
	for lo := int64(0); lo < n; lo += size {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// fetchFull fills buf from the fetcher at off. A short read is an error
// wrapping io.ErrUnexpectedEOF. When ctx ends first the fetch is abandoned
// (buf is then never used), so a fetcher that ignores ctx cannot hang readers.
func fetchFull(ctx context.Context, f Fetcher, buf []byte, off int64) error {
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := f.FetchAt(ctx, buf, off)
		done <- result{n, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	switch {
	case r.n == len(buf) && (r.err == nil || errors.Is(r.err, io.EOF)):
		return nil
	case r.err == nil || errors.Is(r.err, io.EOF):
		return fmt.Errorf("short read of %d/%d bytes at %d: %w", r.n, len(buf), off, io.ErrUnexpectedEOF)
	default:
		return r.err
	}
}

// load verifies the compressed bytes of span i against its digest,
// decompresses them, checks the checkpoint windows around the span (see
// checkWindows) and stores
// the result in the cache (stored reports whether that worked). Unverified
// bytes never reach the decompressor, and bytes from a mismatched window
// are neither served nor cached. The decompression holds the span's
// length of the decompression bound until the data is stored, waiting for
// it as long as ctx allows.
func (m *Manager) load(ctx context.Context, i int, compressed []byte) (data []byte, stored bool, err error) {
	s := m.table.Spans[i]
	if err := m.badSpan(i); err != nil {
		return nil, false, err
	}
	if got := s.Digest.Algorithm().FromBytes(compressed); got != s.Digest {
		err := fmt.Errorf("verify span %d of %s: %w", i, m.key, ErrVerification)
		log.G(ctx).WithField("layer", m.key).WithField("span", i).WithField("expected", s.Digest).WithField("actual", got).
			Error("span digests do not match; not serving it")
		return nil, false, err
	}
	release, err := m.limit.acquire(ctx, s.Len())
	if err != nil {
		if isTooLarge(err) {
			log.G(ctx).WithError(err).WithField("layer", m.key).WithField("span", i).
				Error("span too large to decompress; reads of it fail with EIO")
		}
		return nil, false, fmt.Errorf("decompress span %d of %s: %w", i, m.key, err)
	}
	defer release()
	data, err = m.dec.Decompress(compressed, i)
	if err != nil {
		return nil, false, fmt.Errorf("decompress span %d of %s: %w", i, m.key, err)
	}
	if int64(len(data)) != s.Len() {
		return nil, false, fmt.Errorf("decompress span %d of %s: got %d bytes, want %d: %w", i, m.key, len(data), s.Len(), io.ErrUnexpectedEOF)
	}
	if err := m.checkWindows(ctx, i, data); err != nil {
		return nil, false, err
	}
	return data, m.store(ctx, i, data), nil
}

// store puts span i into the cache and reports success. A failure (disk
// full, say) is logged; the data then serves only the waiting readers.
func (m *Manager) store(ctx context.Context, i int, data []byte) bool {
	if err := m.cache.Put(m.keys[i], data); err != nil {
		log.G(ctx).WithError(err).WithField("span", i).Warn("cannot cache span; serving it from memory to waiting readers only")
		return false
	}
	m.mu.Lock()
	gone := m.poisoned != nil || m.bad[i] != nil // taken out of service meanwhile
	m.mu.Unlock()
	if gone {
		_ = m.cache.Remove(m.keys[i])
		return false
	}
	return true
}

// finish completes the shared fetch of span i. The span becomes cached when
// stored, otherwise missing again so that a later read fetches it anew.
func (m *Manager) finish(i int, data []byte, err error, stored bool) {
	m.mu.Lock()
	c := m.calls[i]
	m.calls[i] = nil
	if bad := cmp.Or(m.poisoned, m.bad[i]); bad != nil && err == nil {
		data, err, stored = nil, bad, false // taken out of service while it loaded
	}
	if data == nil && !errors.Is(err, ErrVerification) { // a fetch that failed; a bad span is re-fetched
		m.noteFailure(i, err)
	} else {
		m.noteFailure(i, nil)
	}
	if stored {
		m.setState(i, cached)
	} else {
		m.setState(i, missing)
	}
	m.mu.Unlock()
	c.data, c.err = data, err
	close(c.done)
}
