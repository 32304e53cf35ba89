package span

import (
	"bytes"
	"context"
	"testing"

	"github.com/fastsoci/soci-snapshotter/fs/cache"
)

// TestSplitRequest: with SplitRequest, one fetch of several spans becomes up
// to MaxSplit parallel range requests, and the bytes still come out right.
func TestSplitRequest(t *testing.T) {
	l := buildLayer(t, 21, []int{40000, 40000, 40000, 40000, 40000}, true)
	ctx := context.Background()
	for _, tc := range []struct {
		split    int64
		maxSplit int
		want     int
	}{{0, 0, 1}, {1 << 30, 0, 1}, {int64(len(l.blob)+2) / 3, 0, 3}, {1000, 2, 2}} {
		f := &fakeFetcher{blob: l.blob}
		m := newManager(t, l, f, cache.NewMemory(), func(o *Options) { o.SplitRequest, o.MaxSplit = tc.split, tc.maxSplit })
		got := make([]byte, len(l.data))
		if n, err := m.FetchAt(ctx, got, 0); n != len(got) || err != nil {
			t.Fatalf("split %d: read %d bytes: %v", tc.split, n, err)
		}
		if !bytes.Equal(got, l.data) {
			t.Errorf("split %d: wrong bytes", tc.split)
		}
		if r := f.requests(); r != tc.want {
			t.Errorf("split %d/%d: %d requests, want %d", tc.split, tc.maxSplit, r, tc.want)
		}
	}
}
