// Package chunkfetch downloads one blob into a local file in chunks that may
// be fetched concurrently (HTTP range requests through a RangeReader), and
// reads it back in order while it arrives: the Reader follows the bytes
// written so far, hashes everything it delivers and, at the end of the blob,
// fails with a digest error instead of io.EOF when the bytes are not the
// descriptor's. Nothing is ever held in memory beyond the buffers the caller
// hands to FetchChunk.
//
// Used by parallel pull and unpack (package pull) for layers that are not
// served lazily.
package chunkfetch

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// RangeReader reads len(p) bytes of the blob at off, as io.ReaderAt does
// (fewer only at its end, then io.EOF). remote.Blob satisfies it.
type RangeReader interface {
	FetchAt(ctx context.Context, p []byte, off int64) (int, error)
}

// ErrDigest is the class of a blob whose bytes are not its descriptor's.
var ErrDigest = errors.New("blob digest mismatch")

// MaxChunks bounds the chunks of one download: a larger blob gets larger
// chunks than asked for.
const MaxChunks = 1 << 16

// Chunk is one part of the blob, fetched by one worker.
type Chunk struct {
	Off, Len int64
}

// Download is one blob being written to a file. It is safe for concurrent
// use: chunks may be fetched by several goroutines while a Reader reads.
type Download struct {
	f      *os.File
	desc   ocispec.Descriptor
	chunks []Chunk

	mu      sync.Mutex
	written []int64       // bytes of each chunk written so far, from its start
	err     error         // the first failure; ends every read
	changed chan struct{} // closed and replaced whenever written or err change
}

// New prepares the download of desc into f (an empty file the caller owns)
// in chunks of chunkSize bytes (<= 0: the whole blob is one chunk). desc
// must name a sha256 or sha512 digest and a positive size: they come from a
// manifest whose digest was checked, and are the only sizes trusted.
func New(f *os.File, desc ocispec.Descriptor, chunkSize int64) (*Download, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("download blob %q: %w: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	if desc.Size <= 0 {
		return nil, fmt.Errorf("download blob %s: size %d: %w", desc.Digest, desc.Size, errdefs.ErrInvalidArgument)
	}
	if chunkSize <= 0 || chunkSize > desc.Size {
		chunkSize = desc.Size
	}
	// The size is the manifest's (up to the caller's bound, a TiB for
	// parallel pull) and the chunk size the user's: bound the chunk table.
	chunkSize = max(chunkSize, (desc.Size+MaxChunks-1)/MaxChunks)
	n := (desc.Size + chunkSize - 1) / chunkSize
	chunks := make([]Chunk, 0, n)
	for off := int64(0); off < desc.Size; off += chunkSize {
		chunks = append(chunks, Chunk{Off: off, Len: min(chunkSize, desc.Size-off)})
	}
	return &Download{
		f: f, desc: desc, chunks: chunks,
		written: make([]int64, len(chunks)),
		changed: make(chan struct{}),
	}, nil
}

// Chunks returns the chunks in blob order.
func (d *Download) Chunks() []Chunk { return d.chunks }

// Descriptor returns the blob being downloaded.
func (d *Download) Descriptor() ocispec.Descriptor { return d.desc }

// FetchChunk fetches chunk i through r in requests of at most len(buf)
// bytes, in order, writing each to the file as it arrives. A failure fails
// the whole download (and every Reader) and is returned.
func (d *Download) FetchChunk(ctx context.Context, r RangeReader, i int, buf []byte) error {
	if i < 0 || i >= len(d.chunks) || len(buf) == 0 {
		return fmt.Errorf("fetch chunk %d of %d of blob %s with a %d-byte buffer: %w", i, len(d.chunks), d.desc.Digest, len(buf), errdefs.ErrInvalidArgument)
	}
	c := d.chunks[i]
	for done := int64(0); done < c.Len; {
		if err := d.failed(); err != nil {
			return err
		}
		p := buf[:min(int64(len(buf)), c.Len-done)]
		off := c.Off + done
		n, err := r.FetchAt(ctx, p, off)
		if err == io.EOF && n == len(p) {
			err = nil
		}
		if err == nil && n != len(p) {
			err = io.ErrUnexpectedEOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the descriptor's size says there is more
		}
		if err != nil {
			err = fmt.Errorf("fetch bytes %d-%d of blob %s: %w", off, off+int64(len(p))-1, d.desc.Digest, err)
			d.Fail(err)
			return err
		}
		if _, err := d.f.WriteAt(p, off); err != nil {
			err = fmt.Errorf("write bytes %d-%d of blob %s: %w", off, off+int64(len(p))-1, d.desc.Digest, err)
			d.Fail(err)
			return err
		}
		done += int64(n)
		d.progress(i, done)
	}
	return nil
}

// Fail ends the download with err (the first failure wins): readers stop
// with it.
func (d *Download) Fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err == nil {
		d.err = err
		close(d.changed)
		d.changed = make(chan struct{})
	}
}

func (d *Download) failed() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

func (d *Download) progress(i int, done int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.written[i] = done
	close(d.changed)
	d.changed = make(chan struct{})
}

// available returns how many bytes from pos on are written, or a channel
// closed at the next change when none is.
func (d *Download) available(pos int64) (int64, <-chan struct{}, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return 0, nil, d.err
	}
	var n int64
	for i, c := range d.chunks {
		if pos >= c.Off+c.Len {
			continue
		}
		end := c.Off + d.written[i]
		if pos < c.Off || end <= pos {
			break
		}
		n += end - max(pos, c.Off)
		if d.written[i] < c.Len {
			break
		}
	}
	if n == 0 {
		return 0, d.changed, nil
	}
	return n, nil, nil
}

// Reader returns a reader of the blob from its start. Reads wait for the
// bytes to be written (or ctx, or a failure); at the end of the blob the
// sha256 (or the descriptor's algorithm) of everything read is compared
// with the descriptor: a mismatch is an error wrapping ErrDigest instead of
// io.EOF. One Reader is meant to be read by one goroutine.
func (d *Download) Reader(ctx context.Context) io.Reader {
	return &reader{ctx: ctx, d: d, v: d.desc.Digest.Algorithm().Hash()}
}

type reader struct {
	ctx  context.Context
	d    *Download
	pos  int64
	v    hash.Hash
	done error
}

func (r *reader) Read(p []byte) (int, error) {
	if r.done != nil {
		return 0, r.done
	}
	if r.pos == r.d.desc.Size {
		r.done = r.verify()
		return 0, r.done
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, wait, err := r.d.available(r.pos)
		if err != nil {
			return 0, err
		}
		if n > 0 {
			m, err := r.d.f.ReadAt(p[:min(int64(len(p)), n)], r.pos)
			r.v.Write(p[:m])
			r.pos += int64(m)
			if err == io.EOF && m > 0 {
				err = nil
			}
			if err != nil {
				return m, fmt.Errorf("read blob %s back at %d: %w", r.d.desc.Digest, r.pos, err)
			}
			return m, nil
		}
		select {
		case <-wait:
		case <-r.ctx.Done():
			return 0, fmt.Errorf("read blob %s: %w", r.d.desc.Digest, context.Cause(r.ctx))
		}
	}
}

func (r *reader) verify() error {
	got := digest.NewDigestFromBytes(r.d.desc.Digest.Algorithm(), r.v.Sum(nil))
	if got != r.d.desc.Digest {
		return fmt.Errorf("blob %s (%d bytes) has digest %s: %w", r.d.desc.Digest, r.d.desc.Size, got, ErrDigest)
	}
	return io.EOF
}
