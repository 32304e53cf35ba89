package service

import (
	"testing"
	"time"

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

// TestFSOptionsFuse: [fuse] timeouts, log_fuse_operations and debug reach
// the lazy filesystem's options.
func TestFSOptionsFuse(t *testing.T) {
	cfg, err := config.Parse([]byte("debug = true\n[fuse]\nattr_timeout = 5\nentry_timeout = 6\nnegative_timeout = -1\nlog_fuse_operations = true\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := fsOptions(cfg, t.TempDir(), metrics.New(), nil)
	if o.AttrTimeout != 5*time.Second || o.EntryTimeout != 6*time.Second || o.NegativeTimeout != -time.Second {
		t.Errorf("timeouts %v %v %v, want 5s 6s -1s", o.AttrTimeout, o.EntryTimeout, o.NegativeTimeout)
	}
	if !o.FuseDebug || !o.LogFuseOperations {
		t.Errorf("debug %v, log_fuse_operations %v: want both on", o.FuseDebug, o.LogFuseOperations)
	}
	d := fsOptions(config.Default(), t.TempDir(), metrics.New(), nil)
	if day := 24 * time.Hour; d.AttrTimeout != day || d.EntryTimeout != day || d.NegativeTimeout != day || d.FuseDebug || d.LogFuseOperations {
		t.Errorf("defaults: %v %v %v debug %v ops %v, want a day (layers never change) and off", d.AttrTimeout, d.EntryTimeout, d.NegativeTimeout, d.FuseDebug, d.LogFuseOperations)
	}
}

// TestFSOptionsVerifyRetries: [blob] max_span_verification_retries reaches
// the span managers' options; negative is upstream's 3.
func TestFSOptionsVerifyRetries(t *testing.T) {
	for doc, want := range map[string]int{"": 0, "[blob]\nmax_span_verification_retries = 2\n": 2, "[blob]\nmax_span_verification_retries = -1\n": 3} {
		cfg, err := config.Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if got := fsOptions(cfg, t.TempDir(), nil, nil).VerifyRetries; got != want {
			t.Errorf("%q: VerifyRetries %d, want %d", doc, got, want)
		}
	}
}
