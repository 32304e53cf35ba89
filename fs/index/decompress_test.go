package index

import (
	"encoding/binary"
	"math/rand"
	"testing"
	"time"
)

// TestDecompressHostile feeds garbage and zTOCs that lie about span sizes to
// the inflate: every call must return (soci's C code spins forever on the
// lying spans).
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
