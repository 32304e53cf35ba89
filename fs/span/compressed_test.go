package span

import (
	"bytes"
	"context"
	"testing"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

// TestKeepCompressed: with KeepCompressed, a read's fetch keeps each span's
// verified compressed bytes for the background walk until DropCompressed;
// without it nothing is kept.
func TestKeepCompressed(t *testing.T) {
	l := buildLayer(t, 11, []int{4096, 5000, 3000}, true)
	ctx := context.Background()
	for _, keep := range []bool{true, false} {
		m := newManager(t, l, &fakeFetcher{blob: l.blob}, cache.NewMemory(), func(o *Options) { o.KeepCompressed = keep })
		buf := make([]byte, 100)
		if _, err := m.FetchAt(ctx, buf, 5000); err != nil { // span 1
			t.Fatal(err)
		}
		s := l.table.Spans[1]
		got, ok := m.Loader().Compressed(ctx, 1)
		if ok != keep || (keep && !bytes.Equal(got, l.blob[s.CompressedStart:s.CompressedEnd])) {
			t.Errorf("keep=%v: Compressed(1) = %d bytes, %v", keep, len(got), ok)
		}
		if _, ok := m.Loader().Compressed(ctx, 0); ok {
			t.Errorf("keep=%v: span 0 was never fetched but has a compressed copy", keep)
		}
		if !m.Loader().Has(ctx, 1) || m.Loader().Has(ctx, 2) {
			t.Errorf("keep=%v: Has(1)=%v Has(2)=%v, want true false", keep, m.Loader().Has(ctx, 1), m.Loader().Has(ctx, 2))
		}
		m.Loader().DropCompressed(ctx)
		if _, ok := m.Loader().Compressed(ctx, 1); ok {
			t.Errorf("keep=%v: compressed copy survives DropCompressed", keep)
		}
	}
}
