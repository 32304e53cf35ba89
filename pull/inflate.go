package pull

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// Multi-core inflate. A gzip layer is one deflate stream, which one core
// inflates in order. When the layer has a zTOC (its image has a SOCI
// index), the zTOC's checkpoints let inflate start at each span, so the
// spans of the layer are inflated on several cores at once and their
// bytes written in order to the unpack.
//
// What makes it safe: the compressed bytes are the blob's (its digest is
// checked when the download's reader reaches the end); the output is
// compared with the gzip trailer (CRC-32 and length) and, by the caller,
// with the diffID. An output that differs (a zTOC whose checkpoints lie, a
// blob of several gzip members) is not an error of the layer: the unpack is
// done again in one stream.

// SpanSource opens the zTOC view of a layer (fs/index, through an adapter).
type SpanSource interface {
	// Open returns the spans of layer in the SOCI index of the image
	// manifest of ref; an error when it has none (or any other failure):
	// the layer is then inflated in one stream.
	Open(ctx context.Context, ref string, manifest digest.Digest, layer ocispec.Descriptor) (SpanLayer, error)
}

// SpanLayer is a layer's span table and the inflate of one span from its
// checkpoint (index.Layer).
type SpanLayer interface {
	Table() span.Table
	Gzip() bool
	// Decompress returns span i's uncompressed bytes from its compressed
	// bytes, blob[CompressedStart:CompressedEnd].
	Decompress(compressed []byte, i int) ([]byte, error)
	Close() error
}

// maxParallelSpan bounds the spans inflated in parallel (compressed or
// not); a layer with a larger one is inflated in one stream. With
// workers+1 spans in flight it bounds the memory of one unpack.
const maxParallelSpan = 16 << 20

// errInflateMismatch: the spans' output is not the gzip stream's.
var errInflateMismatch = errors.New("spans inflated from the zTOC's checkpoints do not match the gzip trailer")

// parallelizable reports whether t's spans can be inflated in parallel
// while the blob is read in order: gzip, spans in blob order (each may
// start up to one byte before the previous ends: a checkpoint that takes
// bits of the byte before), none empty or too large, the last ending at the
// blob's end and holding the 8-byte trailer. A zTOC is remote data: a
// layout readSpans could not cut is refused here.
func parallelizable(l SpanLayer, size int64) bool {
	t := l.Table()
	if !l.Gzip() || len(t.Spans) < 2 || t.CompressedSize != size || size < 18 {
		return false
	}
	prevEnd := int64(-1)
	for _, s := range t.Spans {
		if s.CompressedEnd <= s.CompressedStart || s.CompressedEnd-s.CompressedStart > maxParallelSpan || s.Len() > maxParallelSpan {
			return false
		}
		if prevEnd >= 0 && (s.CompressedStart < prevEnd-1 || s.CompressedStart > prevEnd) {
			return false
		}
		prevEnd = s.CompressedEnd
	}
	// The last span holds the gzip trailer (readSpans takes it from there).
	last := t.Spans[len(t.Spans)-1]
	return prevEnd == size && last.CompressedEnd-last.CompressedStart >= 8
}

// spanJob is one span being inflated.
type spanJob struct {
	i    int
	in   []byte
	out  []byte
	err  error
	done chan struct{}
}

// inflateSpans reads the gzip blob src (t.CompressedSize bytes) in order to
// its end and writes its tar stream to w, inflating up to workers spans at
// once (at most workers+1 in memory, compressed and inflated). l must be parallelizable. It returns
// errInflateMismatch when the output does not match the blob's gzip
// trailer, an error of src's as it is (wrapped), or any other failure. On
// an error it may return before its reader goroutine has stopped: the
// caller fails src, or cancels ctx, which stops it.
func inflateSpans(ctx context.Context, src io.Reader, l SpanLayer, workers int, w io.Writer) error {
	t := l.Table()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workers = max(workers, 1)
	// live bounds the spans in memory, from the read of their compressed
	// bytes to the write of their output: one per worker and the one
	// being written.
	live := make(chan struct{}, workers+1)
	order := make(chan *spanJob, workers+1)
	work := make(chan *spanJob, workers)
	for range workers {
		go func() {
			for j := range work {
				j.out, j.err = inflateOne(l, j)
				j.in = nil
				close(j.done)
			}
		}()
	}
	var trailer [8]byte
	readErr := make(chan error, 1)
	go func() {
		defer close(work)
		defer close(order)
		defer func() { // registry bytes never take the daemon down
			if r := recover(); r != nil {
				readErr <- fmt.Errorf("read the layer's spans: panic: %v", r)
			}
		}()
		readErr <- readSpans(ctx, src, t, live, order, work, trailer[:])
	}()

	crc := crc32.NewIEEE()
	var n int64
	for j := range order {
		select {
		case <-j.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if j.err != nil {
			return fmt.Errorf("inflate span %d from its checkpoint: %w", j.i, j.err)
		}
		if int64(len(j.out)) != t.Spans[j.i].Len() {
			return fmt.Errorf("inflate span %d: %d bytes, want %d: %w", j.i, len(j.out), t.Spans[j.i].Len(), errInflateMismatch)
		}
		crc.Write(j.out)
		if _, err := w.Write(j.out); err != nil {
			return fmt.Errorf("write the tar stream: %w", err)
		}
		n += int64(len(j.out))
		j.out = nil
		<-live
	}
	if err := <-readErr; err != nil {
		return err
	}
	if binary.LittleEndian.Uint32(trailer[:4]) != crc.Sum32() || binary.LittleEndian.Uint32(trailer[4:]) != uint32(n) {
		return errInflateMismatch
	}
	return nil
}

// inflateOne inflates j's span; a panic on the registry's bytes is an
// error of the span, not the end of the daemon.
func inflateOne(l SpanLayer, j *spanJob) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("inflate span %d: panic: %v", j.i, r)
		}
	}()
	return l.Decompress(j.in, j.i)
}

// readSpans reads src in order and hands each span's compressed bytes to
// the workers, queueing it in order for the writer; the last 8 bytes of
// the blob go to trailer. src is read to its end.
func readSpans(ctx context.Context, src io.Reader, t span.Table, live chan struct{}, order, work chan<- *spanJob, trailer []byte) error {
	var pos int64    // bytes of src read
	var last [1]byte // the byte before pos
	for i, s := range t.Spans {
		if s.CompressedStart > pos { // the gzip header before span 0
			if _, err := io.CopyN(io.Discard, src, s.CompressedStart-pos); err != nil {
				return fmt.Errorf("read the layer: %w", err)
			}
			pos = s.CompressedStart
		}
		select { // room for one more span in memory
		case live <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		in := make([]byte, s.CompressedEnd-s.CompressedStart)
		k := 0
		if s.CompressedStart < pos { // one byte shared with the span before
			in[0], k = last[0], 1
		}
		if _, err := io.ReadFull(src, in[k:]); err != nil {
			return fmt.Errorf("read the layer: %w", err)
		}
		pos = s.CompressedEnd
		last[0] = in[len(in)-1]
		if i == len(t.Spans)-1 {
			copy(trailer, in[len(in)-8:])
		}
		j := &spanJob{i: i, in: in, done: make(chan struct{})}
		for _, ch := range []chan<- *spanJob{order, work} {
			select {
			case ch <- j:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	// Nothing should follow; reading to the end lets src check the blob.
	if _, err := io.Copy(io.Discard, src); err != nil {
		return fmt.Errorf("read the layer: %w", err)
	}
	return nil
}

// parallelUnpack is an unpack's use of a layer's spans.
type parallelUnpack struct {
	l       SpanLayer
	workers int
}

// reader returns the tar stream of src inflated span by span, and a func
// that closes it and returns the inflate's result once the unpack read
// what it wanted.
func (u parallelUnpack) reader(ctx context.Context, src io.Reader) (io.Reader, func() error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := inflateSpans(ctx, src, u.l, u.workers, pw)
		pw.CloseWithError(err)
		done <- err
	}()
	var once sync.Once
	var err error
	return pr, func() error {
		once.Do(func() {
			pr.CloseWithError(errUnpackDone) // a writer still at it stops
			err = <-done
		})
		return err
	}
}

var errUnpackDone = errors.New("unpack done")
