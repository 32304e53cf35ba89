package background

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
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
// and a read buffer.
type streamCheck struct {
	ch       chan []byte
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
	err      error      // the result, once done is closed
	sums     [][32]byte // sha256 of each span's uncompressed bytes, once done
}

func startStreamCheck(l Layer) *streamCheck {
	c := &streamCheck{ch: make(chan []byte, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.err = c.run(l)
	}()
	return c
}

// feed hands b, which the caller no longer modifies, to the check. Bytes
// fed after the check finished (it found a mismatch early) are dropped.
func (c *streamCheck) feed(ctx context.Context, b []byte) {
	if len(b) == 0 {
		return
	}
	select {
	case c.ch <- b:
	case <-c.done:
	case <-c.stop:
	case <-ctx.Done():
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
	var r io.Reader = &chanReader{ch: c.ch, stop: c.stop}
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

// chanReader reads the chunks sent on ch until it is closed.
type chanReader struct {
	ch   <-chan []byte
	stop <-chan struct{}
	cur  []byte
}

func (r *chanReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		select {
		case b, ok := <-r.ch:
			if !ok {
				return 0, io.EOF
			}
			r.cur = b
		case <-r.stop:
			return 0, errAbandoned
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
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
