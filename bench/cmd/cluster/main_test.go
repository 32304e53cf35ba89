package main

import (
	"slices"
	"testing"
)

func TestParseCounts(t *testing.T) {
	got, err := parseCounts("1, 4,8")
	if err != nil || !slices.Equal(got, []int{1, 4, 8}) {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "1,,2", "33", "-1", "x"} {
		if _, err := parseCounts(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParsePaths(t *testing.T) {
	got, err := parsePaths("direct, mirror-warm")
	if err != nil || !slices.Equal(got, []string{"direct", "mirror-warm"}) {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range []string{"", "mirror,", "lan"} {
		if _, err := parsePaths(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
