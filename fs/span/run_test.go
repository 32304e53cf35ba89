package span

import (
	"slices"
	"testing"
)

// runTable has five spans; compressed ranges overlap by one byte like gzip
// checkpoints: [0,100) [99,200) [199,300) [299,700) [699,800), and the
// uncompressed ones are 1000 bytes each except span 3 (4000).
func runTable() Table {
	t := Table{CompressedSize: 800, UncompressedSize: 8000}
	cs := [][2]int64{{0, 100}, {99, 200}, {199, 300}, {299, 700}, {699, 800}}
	us := [][2]int64{{0, 1000}, {1000, 2000}, {2000, 3000}, {3000, 7000}, {7000, 8000}}
	for i := range cs {
		t.Spans = append(t.Spans, Span{CompressedStart: cs[i][0], CompressedEnd: cs[i][1], UncompressedStart: us[i][0], UncompressedEnd: us[i][1]})
	}
	return t
}

func TestRun(t *testing.T) {
	tb := runTable()
	for _, c := range []struct {
		name        string
		first, last int
		max         int64
		b           Bytes
		want        int
	}{
		{"exactly two spans, overlap counted once", 0, 4, 200, CompressedBytes, 1},
		{"one byte short of two spans", 0, 4, 199, CompressedBytes, 0},
		{"a span larger than max is a run alone", 3, 4, 10, CompressedBytes, 3},
		{"max past the end stops at last", 0, 2, 1 << 20, CompressedBytes, 2},
		{"last bounds the run", 1, 1, 1 << 20, CompressedBytes, 1},
		{"the large span ends the run", 0, 4, 300, CompressedBytes, 2},
		{"uncompressed: three spans", 0, 4, 3000, UncompressedBytes, 2},
		{"uncompressed: the large span does not fit", 2, 4, 4999, UncompressedBytes, 2},
		{"uncompressed: it does", 2, 4, 5000, UncompressedBytes, 3},
		{"uncompressed: single span too large", 3, 4, 1, UncompressedBytes, 3},
	} {
		if got := tb.Run(c.first, c.last, c.max, c.b); got != c.want {
			t.Errorf("%s: Run(%d, %d, %d) = %d, want %d", c.name, c.first, c.last, c.max, got, c.want)
		}
	}
}

func TestRuns(t *testing.T) {
	tb := runTable()
	collect := func(idx []int, max int64) [][2]int {
		var got [][2]int
		tb.runs(idx, max, func(first, last int) { got = append(got, [2]int{first, last}) })
		return got
	}
	for _, c := range []struct {
		name string
		idx  []int
		max  int64
		want [][2]int
	}{
		{"none", nil, 1000, nil},
		{"adjacent spans in one request", []int{0, 1, 2}, 1000, [][2]int{{0, 2}}},
		{"a gap ends the request", []int{0, 2}, 1000, [][2]int{{0, 0}, {2, 2}}},
		{"gap then adjacency", []int{0, 2, 3, 4}, 1000, [][2]int{{0, 0}, {2, 4}}},
		{"max splits a run", []int{0, 1, 2, 3, 4}, 200, [][2]int{{0, 1}, {2, 2}, {3, 3}, {4, 4}}},
		{"one span per request", []int{1, 2, 3}, 1, [][2]int{{1, 1}, {2, 2}, {3, 3}}},
	} {
		if got := collect(c.idx, c.max); !slices.Equal(got, c.want) {
			t.Errorf("%s: runs(%v, %d) = %v, want %v", c.name, c.idx, c.max, got, c.want)
		}
	}
}
