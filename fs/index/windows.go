package index

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// windows gives the 32 KiB inflate window of each gzip checkpoint. A 1 GB
// layer has about 250 of them with 4 MiB spans (8 MiB), and a Layer lives
// as long as its mount: they are read where they are instead of being
// decoded into memory of their own.
type windows interface {
	// window returns checkpoint i's window; s is span i of the table,
	// whose Window is the window's sha256. The result is read-only and
	// not to be changed.
	window(i int, s span.Span) ([]byte, error)
	close() error
}

// zeroWindow is the window of checkpoint 0 of a version 1 blob, which omits
// it: the stream has no history there.
var zeroWindow = make([]byte, windowSize)

// checkpointWindowAt is the offset in a checkpoint blob of checkpoint i's
// window (first is 1 when the blob omits checkpoint 0).
func checkpointWindowAt(i, first int) int64 {
	return blobHeaderSize + int64(i-first)*checkpointSize + 17
}

// memWindows reads windows from the checkpoint blob in memory, the bytes
// of a zTOC that was verified against its digest.
type memWindows struct {
	blob  []byte
	first int
}

// newMemWindows returns the windows of a checkpoint blob of count
// checkpoints that parseCheckpoints accepted.
func newMemWindows(blob []byte, count int) (*memWindows, error) {
	first, err := blobFirst(len(blob), count)
	if err != nil {
		return nil, err
	}
	return &memWindows{blob: blob, first: first}, nil
}

// blobFirst is 1 when a checkpoint blob of n bytes holds count-1
// checkpoints (version 1: checkpoint 0 omitted), 0 when it holds count.
func blobFirst(n, count int) (int, error) {
	body := int64(n) - blobHeaderSize
	switch {
	case count < 1:
	case body == int64(count)*checkpointSize:
		return 0, nil
	case body == int64(count-1)*checkpointSize:
		return 1, nil
	}
	return 0, fmt.Errorf("checkpoint blob of %d bytes does not hold %d checkpoints", n, count)
}

func (w *memWindows) window(i int, _ span.Span) ([]byte, error) {
	if i < w.first {
		return zeroWindow, nil
	}
	at := checkpointWindowAt(i, w.first)
	if i < 0 || at+windowSize > int64(len(w.blob)) {
		return nil, fmt.Errorf("checkpoint %d outside the checkpoint blob", i)
	}
	return w.blob[at : at+windowSize], nil
}

func (w *memWindows) close() error { w.blob = nil; return nil }

// fileWindows reads windows from the zTOC's file in the local store, at
// base (the offset of the checkpoint blob in it). The file is kept open
// for the Layer's life, so a removal of its name changes nothing; each
// window read is checked against the sha256 taken from the verified bytes
// when the zTOC was parsed, so a file changed in place fails the read
// instead of inflating wrong bytes.
type fileWindows struct {
	f     *os.File
	base  int64
	first int
}

func newFileWindows(f *os.File, base int64, first int) *fileWindows {
	return &fileWindows{f: f, base: base, first: first}
}

func (w *fileWindows) window(i int, s span.Span) ([]byte, error) {
	if i < w.first {
		return zeroWindow, nil
	}
	b := make([]byte, windowSize)
	if _, err := w.f.ReadAt(b, w.base+checkpointWindowAt(i, w.first)); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read checkpoint %d window from %s: %w", i, w.f.Name(), err)
	}
	if sha256.Sum256(b) != s.Window {
		return nil, fmt.Errorf("checkpoint %d window in %s changed since the zTOC was verified", i, w.f.Name())
	}
	return b, nil
}

func (w *fileWindows) close() error { return w.f.Close() }

// readWindowsFrom makes l read its checkpoint windows from the file at
// path, of size bytes, whose checkpoint blob (n bytes) is at off. The file
// must hold the bytes l was parsed from: every window read is checked
// against the span table's window digests.
func (l *Layer) readWindowsFrom(path string, size, off int64, n int) error {
	first, err := blobFirst(n, len(l.Spans.Spans))
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err == nil && (!fi.Mode().IsRegular() || fi.Size() != size) {
		err = fmt.Errorf("%s is not the zTOC parsed: %d bytes, want %d", path, fi.Size(), size)
	}
	if err != nil {
		f.Close()
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.windows == nil {
		f.Close()
		return ErrClosed
	}
	old := l.windows
	l.windows = newFileWindows(f, off, first)
	return old.close()
}
