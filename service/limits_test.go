package service

import (
	"testing"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/metrics"
)

// TestFSOptionsLimits: the [limits] on indices, zTOCs and trees reach the
// lazy filesystem's options.
func TestFSOptionsLimits(t *testing.T) {
	cfg := config.Default()
	cfg.Limits.MaxIndexEntries = 11
	cfg.Limits.MaxZTOCBytes = 12
	cfg.Limits.MaxZTOCEntries = 13
	cfg.Limits.MaxZTOCHeapBytes = 14
	cfg.Limits.MaxTreeDepth = 15
	o := fsOptions(cfg, t.TempDir(), metrics.New(), nil)
	want := index.Limits{MaxIndexEntries: 11, MaxZTOCBytes: 12, MaxZTOCEntries: 13, MaxZTOCHeapBytes: 14}
	if o.IndexLimits != want || o.MaxTreeDepth != 15 {
		t.Errorf("got %+v and depth %d, want %+v and depth 15", o.IndexLimits, o.MaxTreeDepth, want)
	}
}
