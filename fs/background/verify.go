package background

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	gzip "github.com/klauspost/compress/gzip"
	"hash"
	"io"
	"sync"

	"github.com/fastsoci/soci-snapshotter/fs/span"
	"github.com/fastsoci/soci-snapshotter/fs/tarcheck"
)

// Errors wrapped by the result of a layer that is not reported fully local
// although its blob was read without a fetch error.
var (
	// ErrZTOCMismatch: the zTOC's file table or its spans contradict the
	// layer blob, which hashed to its digest. The layer is marked bad.
	ErrZTOCMismatch = errors.New("zTOC does not match the layer")
	// ErrSpanLoad: spans failed to load or are not cached after the walk.
	ErrSpanLoad = errors.New("spans not loaded")
	// ErrUnverified: the whole-blob digest check could not run.
	ErrUnverified = errors.New("layer not verified")
)

// errAbandoned ends a stream check the walk gave up.
var errAbandoned = errors.New("layer stream abandoned")

// streamCheck cross-checks the blob bytes the walk hashes, fed in order, in
// its own goroutine: it decompresses them, compares the tar headers with the
// zTOC's file table (fs/tarcheck) and hashes the uncompressed bytes of each
// span for the comparison with the span cache after the walk. At most one
// chunk waits for it; the rest of its memory is the decompressor's window
// and a read buffer. Each chunk's done func is called once the check is
// done with it (consumed, dropped or abandoned).
type streamCheck struct {
	ch       chan piece
	r        chanReader
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
	err      error      // the result, once done is closed
	sums     [][32]byte // sha256 of each span's uncompressed bytes, once done (zero for loaded spans)
	// plan holds the spans the walk reserved for the check to load from
	// the stream and those it loaded (see loadFromStream).
	plan *streamPlan
	// released are the spans reserved for the check that it did not
	// reach and released, in order, once done
	released []int
}

// streamPlan is shared by the walk, which marks the spans it reserved for
// the stream check to load (want) before it feeds their bytes, and the
// check, which asks at the end of each span and notes the spans it loaded.
type streamPlan struct {
	mu     sync.Mutex
	want   []bool
	loaded []bool
	closed bool // the check ended: it takes nothing more
}

func newStreamPlan(n int) *streamPlan {
	return &streamPlan{want: make([]bool, n), loaded: make([]bool, n)}
}

// reserve marks spans first..last as the check's to load; false when the
// check has ended (the walk then loads them itself).
func (p *streamPlan) reserve(first, last int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	for i := first; i <= last; i++ {
		p.want[i] = true
	}
	return true
}

// close ends the plan when the check ends and returns the spans reserved
// for it that it did not take, forgetting them.
func (p *streamPlan) close() []int {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	return p.untaken()
}

// take reports whether the check is to load span i, and if so takes it:
// a span is taken once.
func (p *streamPlan) take(i int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	w := p.want[i]
	p.want[i] = false
	return w
}

// noteLoaded records that span i was loaded from the stream.
func (p *streamPlan) noteLoaded(i int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.loaded[i] = true
}

// isLoaded reports whether span i was loaded from the stream.
func (p *streamPlan) isLoaded(i int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.loaded[i]
}

// pending reports whether any of spans first..last is reserved for the
// check and not taken yet.
func (p *streamPlan) pending(first, last int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := first; i <= last; i++ {
		if p.want[i] {
			return true
		}
	}
	return false
}

// takeBack takes back, for the walk to load itself, the spans of
// first..last reserved for the check that it has not taken yet.
func (p *streamPlan) takeBack(first, last int) []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []int
	for i := first; i <= last; i++ {
		if p.want[i] {
			out = append(out, i)
			p.want[i] = false
		}
	}
	return out
}

// untaken returns the spans reserved for the check that it did not take
// (it stopped first), forgetting them: the walk releases them.
func (p *streamPlan) untaken() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []int
	for i, w := range p.want {
		if w {
			out = append(out, i)
			p.want[i] = false
		}
	}
	return out
}

// maxPlainSpan bounds the spans the stream check buffers to load them
// from the stream (one at a time per walk); larger spans are inflated
// from their checkpoints by Spans.Load.
const maxPlainSpan = 16 << 20

func startStreamCheck(ctx context.Context, l Layer) *streamCheck {
	c := &streamCheck{ch: make(chan piece, 1), stop: make(chan struct{}), done: make(chan struct{}), plan: newStreamPlan(len(l.Table.Spans))}
	c.r = chanReader{ch: c.ch, stop: c.stop}
	go func() {
		c.err = c.run(ctx, l)
		// Spans reserved for the check that it never reached (it found
		// a mismatch, or was abandoned) go back to their readers now,
		// not at the end of the walk.
		c.released = c.plan.close()
		for _, i := range c.released {
			l.Spans.Release(i, i)
		}
		close(c.done)
		c.r.release()
		c.drain()
	}()
	return c
}

// piece is a chunk of the blob fed to the check and the func to call once
// the check is done with it.
type piece struct {
	b    []byte
	done func()
}

// feed hands b, which the caller no longer modifies, to the check; done
// (nil: none) is called once the check is done with b. Bytes fed after the
// check finished (it found a mismatch early) are dropped.
func (c *streamCheck) feed(ctx context.Context, b []byte, done func()) {
	if done == nil {
		done = func() {}
	}
	if len(b) == 0 {
		done()
		return
	}
	select {
	case c.ch <- piece{b, done}:
		select {
		case <-c.done: // finished meanwhile: nobody reads it
			c.drain()
		default:
		}
	case <-c.done:
		done()
	case <-c.stop:
		done()
	case <-ctx.Done():
		done()
	}
}

// drain lets go of the pieces left in the channel once the check is done.
func (c *streamCheck) drain() {
	for {
		select {
		case p, ok := <-c.ch:
			if !ok {
				return
			}
			p.done()
		default:
			return
		}
	}
}

// end says the whole blob was fed and returns the check's result.
func (c *streamCheck) end() error {
	close(c.ch)
	<-c.done
	return c.err
}

// abandon stops the check and waits for its goroutine; it may follow end.
// It returns the spans reserved for the check that it did not load (their
// reservations are released: the walk must load them itself).
func (c *streamCheck) abandon() []int {
	c.stopOnce.Do(func() { close(c.stop) })
	<-c.done
	return c.released
}

func (c *streamCheck) run(ctx context.Context, l Layer) error {
	var r io.Reader = &c.r
	if l.Gzip {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return fmt.Errorf("gzip stream: %w", err)
		}
		r = zr
	}
	h := &spanHasher{r: r, spans: l.Table.Spans, h: sha256.New(), plan: c.plan, spansOut: l.Spans, ctx: ctx}
	br := bufio.NewReaderSize(h, 64<<10)
	err := tarcheck.Check(br, l.Files.Entries)
	if err == nil {
		if _, err = io.Copy(io.Discard, br); err != nil { // after the end-of-archive marker
			err = fmt.Errorf("read after the end of the tar archive: %w", err)
		}
	}
	if h.winErr != nil { // the first lie found in the stream's order
		return h.winErr
	}
	if err != nil {
		return err
	}
	if err := h.finish(l.Table.UncompressedSize); err != nil {
		return err
	}
	if h.winErr != nil {
		return h.winErr
	}
	c.sums = h.sums
	return nil
}

// chanReader reads the chunks sent on ch until it is closed, letting go of
// each once it has read all of it.
type chanReader struct {
	ch   <-chan piece
	stop <-chan struct{}
	cur  []byte
	done func() // of the piece cur is in; nil: none
}

func (r *chanReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		r.release()
		select {
		case pc, ok := <-r.ch:
			if !ok {
				return 0, io.EOF
			}
			r.cur, r.done = pc.b, pc.done
		case <-r.stop:
			return 0, errAbandoned
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// release lets go of the current piece.
func (r *chanReader) release() {
	if r.done != nil {
		r.done()
		r.done = nil
	}
	r.cur = nil
}

// spanHasher goes through the uncompressed stream span by span as it is
// read. A span the walk reserved for it (plan) is collected and loaded
// into the span cache from the stream (Spans.LoadPlain): the layer is
// inflated once, here, instead of once more from each span's checkpoint.
// Every other span is hashed, for the comparison with what reads cached.
// It also checks each span's checkpoint window against the 32 KiB of the
// stream before the span, so a zTOC with altered windows is caught even
// for spans no read inflated.
type spanHasher struct {
	r        io.Reader
	spans    []span.Span
	h        hash.Hash
	plan     *streamPlan
	spansOut Spans
	ctx      context.Context
	i        int   // the span being read
	pos      int64 // bytes read so far
	sums     [][32]byte
	buf      []byte // span i's bytes so far, when collected
	collect  bool   // span i is collected (small enough), not hashed as it comes
	started  bool   // span i was begun
	tail     []byte // the last span.WindowSize bytes of the stream (fewer near its start)
	winErr   error  // the first window that contradicts the stream
}

func (s *spanHasher) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	for b := p[:n]; len(b) > 0; {
		s.advance()
		if s.i == len(s.spans) { // past the table: finish reports it
			s.pos += int64(len(b))
			break
		}
		s.begin()
		k := min(int64(len(b)), s.spans[s.i].UncompressedEnd-s.pos)
		if s.collect {
			s.buf = append(s.buf, b[:k]...)
		} else {
			s.h.Write(b[:k])
		}
		s.keepTail(b[:k])
		s.pos += k
		b = b[k:]
	}
	return n, err
}

// begin starts span i at its first byte: checks its window and decides
// whether to collect it.
func (s *spanHasher) begin() {
	if s.started {
		return
	}
	s.started = true
	sp := s.spans[s.i]
	if sp.HasWindow && s.winErr == nil {
		if got, ok := span.WindowDigest(sp.UncompressedStart, s.tail); ok && got != sp.Window {
			s.winErr = fmt.Errorf("span %d (uncompressed [%d, %d)): its checkpoint window is not the 32 KiB of the layer before it: %w",
				s.i, sp.UncompressedStart, sp.UncompressedEnd, ErrZTOCMismatch)
		}
	}
	s.collect = s.spansOut != nil && sp.Len() <= maxPlainSpan
	if s.collect && s.buf == nil {
		s.buf = make([]byte, 0, sp.Len())
	}
}

// keepTail keeps the last WindowSize bytes of the stream.
func (s *spanHasher) keepTail(b []byte) {
	if len(b) >= span.WindowSize {
		s.tail = append(s.tail[:0], b[len(b)-span.WindowSize:]...)
		return
	}
	if drop := len(s.tail) + len(b) - span.WindowSize; drop > 0 {
		s.tail = append(s.tail[:0], s.tail[drop:]...)
	}
	s.tail = append(s.tail, b...)
}

// advance closes the spans that end at or before pos: loads a collected
// one the walk reserved, hashes it otherwise.
func (s *spanHasher) advance() {
	for s.i < len(s.spans) && s.pos >= s.spans[s.i].UncompressedEnd {
		if !s.started { // an empty span
			s.begin()
		}
		var sum [32]byte
		switch {
		case s.collect && s.plan.take(s.i):
			if s.winErr == nil && s.spansOut.LoadPlain(s.ctx, s.i, s.buf) == nil {
				s.plan.noteLoaded(s.i)
			} else if s.winErr != nil {
				s.spansOut.Release(s.i, s.i)
			}
			s.buf = nil // handed over
		case s.collect:
			s.h.Write(s.buf)
			sum = [32]byte(s.h.Sum(nil))
			s.buf = s.buf[:0]
		default:
			sum = [32]byte(s.h.Sum(nil))
		}
		s.sums = append(s.sums, sum)
		s.h.Reset()
		s.i++
		s.started, s.collect = false, false
	}
}

// finish checks that the stream had exactly size bytes.
func (s *spanHasher) finish(size int64) error {
	s.advance()
	if s.pos != size || s.i != len(s.spans) {
		return fmt.Errorf("the uncompressed layer has %d bytes, the zTOC says %d", s.pos, size)
	}
	return nil
}

// compareSpans reads every span of l back from the span cache and compares
// it with sums, the hashes of the real uncompressed layer. It returns how
// many spans are not cached, and an error wrapping ErrZTOCMismatch for the
// first that differs.
func compareSpans(ctx context.Context, l Layer, sums [][32]byte, loaded func(int) bool) (int, error) {
	if len(sums) != len(l.Table.Spans) {
		return 0, fmt.Errorf("compare spans: %d hashes for %d spans", len(sums), len(l.Table.Spans))
	}
	buf := make([]byte, 256<<10)
	h := sha256.New()
	missing := 0
	for i, sp := range l.Table.Spans {
		if err := ctx.Err(); err != nil {
			return missing, err
		}
		if loaded(i) { // cached from the stream itself: nothing to compare
			if !l.Spans.Has(ctx, i) {
				missing++
			}
			continue
		}
		h.Reset()
		cached := true
		for rel := int64(0); rel < sp.Len(); {
			n := min(int64(len(buf)), sp.Len()-rel)
			if !l.Spans.ReadCached(ctx, i, buf[:n], rel) {
				cached = false
				break
			}
			h.Write(buf[:n])
			rel += n
		}
		if !cached {
			missing++
			continue
		}
		if [32]byte(h.Sum(nil)) != sums[i] {
			return missing, fmt.Errorf("span %d (uncompressed [%d, %d)): the cached bytes differ from the layer's: %w",
				i, sp.UncompressedStart, sp.UncompressedEnd, ErrZTOCMismatch)
		}
	}
	return missing, nil
}
