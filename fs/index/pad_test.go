package index

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"math/rand"
	"runtime"
	"testing"
	"time"

	"github.com/awslabs/soci-snapshotter/ztoc/compression"
)

// emptyBlocks writes non-final deflate blocks that output nothing and take
// 8k+r bits in all (r in 1..8): one empty dynamic block of 95 bits when r is
// odd, and empty fixed blocks of 10 bits.
func emptyBlocks(r int) []byte {
	var w contWriter
	if r%2 == 1 {
		w.bits(0, 1)
		w.bits(2, 2)
		w.bits(0, 5)
		w.bits(0, 5)
		w.bits(15, 4)
		for _, l := range [19]uint32{0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0} {
			w.bits(l, 3)
		}
		w.code(0, 1)
		w.bits(127, 7)
		w.code(0, 1)
		w.bits(107, 7)
		w.code(0b11, 2)
		w.code(0b10, 2)
		w.code(0, 1)
		r = (r + 1) % 8
	}
	for ; r != 0; r -= 2 {
		w.bits(0, 1)
		w.bits(1, 2)
		w.bits(0, 7)
	}
	return w.w.buf
}

// TestStopper checks, with Go's inflate standing in for zlib, that for every
// way a block can start in the last byte of a span the stopper completes a
// valid block header and one output byte.
func TestStopper(t *testing.T) {
	for b := uint8(0); b <= 7; b++ {
		for v := range 1 << b {
			known := uint32(v)
			if b >= 3 && known>>1&3 == 3 {
				continue // block type 3 does not occur in valid streams
			}
			var stream []byte
			if b == 0 {
				stream = emptyBlocks(8) // 40 bits: byte aligned
			} else {
				stream = emptyBlocks(8 - int(b))
				stream[len(stream)-1] |= byte(v) << (8 - b)
			}
			stream = append(stream, stopper(stream[len(stream)-1], b)...)
			// soci's inflate always has a 32 KiB window, so a match of
			// distance 1 is valid: give Go's the same.
			out := make([]byte, 16)
			n, err := flate.NewReaderDict(bytes.NewReader(stream), make([]byte, 32<<10)).Read(out)
			if n < 1 {
				t.Errorf("b=%d v=%0*b: read %d bytes, %v", b, b, v, n, err)
			}
		}
	}
}

// TestDecompressHostile feeds garbage and zTOCs that lie about span sizes to
// the C inflate: every call must return (soci's code alone spins forever on
// the lying spans).
func TestDecompressHostile(t *testing.T) {
	tl := newTestLayer(t, 600<<10, 64<<10)
	l, err := ParseZTOC(tl.ztocData, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	z, err := decodeZTOC(tl.ztocData, Limits{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	for k := 1; k <= int(z.MaxSpanID); k++ { // stretch every span
		p := z.Checkpoints[blobHeaderSize+k*checkpointSize+8:]
		binary.LittleEndian.PutUint64(p, binary.LittleEndian.Uint64(p)*3)
	}
	z.UncompressedArchiveSize *= 4
	c, err := convert(z)
	if err != nil {
		t.Fatal(err)
	}
	liar, err := newLayer(z, c)
	if err != nil {
		t.Fatal(err)
	}
	defer liar.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := rand.New(rand.NewSource(1))
		for i, s := range liar.Spans.Spans {
			_, _ = liar.Decompress(tl.blob[s.CompressedStart:s.CompressedEnd], i)
		}
		for range 10 {
			for i, s := range l.Spans.Spans {
				junk := make([]byte, s.CompressedEnd-s.CompressedStart)
				r.Read(junk)
				_, _ = l.Decompress(junk, i)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("Decompress of hostile input did not return")
	}
}

// TestFreeZinfo checks that the checkpoint list soci's Close leaks is
// recognised and freed on the platforms we ship.
func TestFreeZinfo(t *testing.T) {
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("layout check only asserted on amd64 and arm64, not %s", runtime.GOARCH)
	}
	tl := newTestLayer(t, 300<<10, 64<<10)
	z, err := decodeZTOC(tl.ztocData, Limits{}.withDefaults())
	if err != nil {
		t.Fatal(err)
	}
	c, err := convert(z)
	if err != nil {
		t.Fatal(err)
	}
	zi, err := compression.NewZinfo(compression.Gzip, z.Checkpoints)
	if err != nil {
		t.Fatal(err)
	}
	if !freeZinfo(zi, len(c.table.Spans), c.spanSize) {
		t.Error("the gzip_zinfo layout was not recognised: its checkpoint list leaked")
	}
	zi, _ = compression.NewZinfo(compression.Gzip, z.Checkpoints)
	if freeZinfo(zi, len(c.table.Spans)+1, c.spanSize) {
		t.Error("freed a list although the count did not match")
	}
}
