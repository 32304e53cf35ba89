package fs

import (
	"reflect"
	"testing"

	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// TestLocalSpansEach: a range is cut at span boundaries into (span, offset
// in the span, length, offset in the range); ranges outside the stream and
// callbacks that fail stop it.
func TestLocalSpansEach(t *testing.T) {
	s := localSpans{t: span.Table{UncompressedSize: 30, Spans: []span.Span{
		{UncompressedStart: 0, UncompressedEnd: 10},
		{UncompressedStart: 10, UncompressedEnd: 25},
		{UncompressedStart: 25, UncompressedEnd: 30},
	}}}
	type piece struct {
		i          int
		rel, k, at int64
	}
	collect := func(off, n int64) ([]piece, bool) {
		var got []piece
		ok := s.each(off, n, func(i int, rel, k, at int64) bool {
			got = append(got, piece{i, rel, k, at})
			return true
		})
		return got, ok
	}
	for _, tc := range []struct {
		off, n int64
		want   []piece
		ok     bool
	}{
		{3, 4, []piece{{0, 3, 4, 0}}, true},
		{8, 20, []piece{{0, 8, 2, 0}, {1, 0, 15, 2}, {2, 0, 3, 17}}, true},
		{25, 5, []piece{{2, 0, 5, 0}}, true},
		{0, 0, nil, true},
		{28, 5, nil, false},
		{-1, 2, nil, false},
	} {
		got, ok := collect(tc.off, tc.n)
		if ok != tc.ok || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("each(%d, %d) = %v, %v; want %v, %v", tc.off, tc.n, got, ok, tc.want, tc.ok)
		}
	}
	calls := 0
	if s.each(0, 30, func(int, int64, int64, int64) bool { calls++; return false }) || calls != 1 {
		t.Errorf("a failing callback: %d calls, want one and false", calls)
	}
}
