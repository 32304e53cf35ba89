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
	sums     [][32]byte // sha256 of each span's uncompressed bytes, once done
}

func startStreamCheck(l Layer) *streamCheck {
	c := &streamCheck{ch: make(chan piece, 1), stop: make(chan struct{}), done: make(chan struct{})}
	c.r = chanReader{ch: c.ch, stop: c.stop}
	go func() {
		c.err = c.run(l)
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
func (c *streamCheck) abandon() {
	c.stopOnce.Do(func() { close(c.stop) })
	<-c.done
}

func (c *streamCheck) run(l Layer) error {
	var r io.Reader = &c.r
	if l.Gzip {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return fmt.Errorf("gzip stream: %w", err)
		}
		r = zr
	}
	h := &spanHasher{r: r, spans: l.Table.Spans, h: sha256.New()}
	br := bufio.NewReaderSize(h, 64<<10)
	if err := tarcheck.Check(br, l.Files.Entries); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, br); err != nil { // after the end-of-archive marker
		return fmt.Errorf("read after the end of the tar archive: %w", err)
	}
	if err := h.finish(l.Table.UncompressedSize); err != nil {
		return err
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

// spanHasher hashes the uncompressed stream span by span as it is read.
type spanHasher struct {
	r     io.Reader
	spans []span.Span
	h     hash.Hash
	i     int   // the span being hashed
	pos   int64 // bytes read so far
	sums  [][32]byte
}

func (s *spanHasher) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	for b := p[:n]; len(b) > 0; {
		s.advance()
		if s.i == len(s.spans) { // past the table: finish reports it
			s.pos += int64(len(b))
			break
		}
		k := min(int64(len(b)), s.spans[s.i].UncompressedEnd-s.pos)
		s.h.Write(b[:k])
		s.pos += k
		b = b[k:]
	}
	return n, err
}

// advance closes the spans that end at or before pos.
func (s *spanHasher) advance() {
	for s.i < len(s.spans) && s.pos >= s.spans[s.i].UncompressedEnd {
		s.sums = append(s.sums, [32]byte(s.h.Sum(nil)))
		s.h.Reset()
		s.i++
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
func compareSpans(ctx context.Context, l Layer, sums [][32]byte) (int, error) {
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
