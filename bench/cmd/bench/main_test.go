package main

import (
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/shaper"
)

func TestParseLinks(t *testing.T) {
	got, err := parseLinks(matrixLinks + ",per-conn:0s:0")
	if err != nil {
		t.Fatal(err)
	}
	want := []harness.Shaping{
		{Mode: shaper.Shared, RTT: 20 * time.Millisecond, RateMbit: 200},
		{Mode: shaper.Shared, RTT: 50 * time.Millisecond, RateMbit: 100},
		{Mode: shaper.PerConn},
	}
	if len(got) != len(want) {
		t.Fatalf("parsed %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("link %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"shared:20ms", "fast:20ms:200", "shared:soon:200", "shared:20ms:-1", "shared:-1s:200"} {
		if _, err := parseLinks(bad); err == nil {
			t.Errorf("parseLinks(%q) accepted it", bad)
		}
	}
}
