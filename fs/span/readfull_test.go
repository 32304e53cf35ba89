package span

import (
	"context"
	"errors"
	"io"
	"testing"
)

func TestCheckRead(t *testing.T) {
	boom := errors.New("boom")
	for _, c := range []struct {
		n, want int
		err     error
		ok      bool
		is      error
	}{
		{10, 10, nil, true, nil},
		{10, 10, io.EOF, true, nil}, // all bytes and the end of the blob
		{0, 0, nil, true, nil},
		{4, 10, nil, false, io.ErrUnexpectedEOF},
		{4, 10, io.EOF, false, io.ErrUnexpectedEOF},
		{0, 10, io.EOF, false, io.ErrUnexpectedEOF},
		{10, 10, boom, false, boom}, // an error wins over a full count
		{4, 10, boom, false, boom},
	} {
		err := CheckRead(c.n, c.want, 7, c.err)
		if (err == nil) != c.ok || (c.is != nil && !errors.Is(err, c.is)) {
			t.Errorf("CheckRead(%d, %d, %v) = %v, want ok %v, is %v", c.n, c.want, c.err, err, c.ok, c.is)
		}
	}
}

// TestReadFullOrAbandon: short reads are errors; a fetcher that ignores ctx
// is abandoned when ctx ends.
func TestReadFullOrAbandon(t *testing.T) {
	l := buildLayer(t, 1, []int{1000}, false)
	f := &fakeFetcher{blob: l.blob}
	p := make([]byte, len(l.blob))
	if err := readFullOrAbandon(t.Context(), f, p, 0); err != nil {
		t.Fatal(err)
	}
	if err := ReadFull(t.Context(), f, make([]byte, 10), int64(len(l.blob))-4); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read past the end: %v, want io.ErrUnexpectedEOF", err)
	}
	f.set(func(f *fakeFetcher) { f.short = true })
	if err := readFullOrAbandon(t.Context(), f, p, 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short read: %v, want io.ErrUnexpectedEOF", err)
	}
	gate := make(chan struct{})
	defer close(gate)
	f.set(func(f *fakeFetcher) { f.short, f.gate, f.ignoreCtx = false, gate, true })
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := readFullOrAbandon(ctx, f, p, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("fetcher ignoring a canceled ctx: %v, want context.Canceled", err)
	}
}
