package fs

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/background"
	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/fs/source"
)

// TestMountRefusesBadLayer: a layer whose zTOC the background check marked
// bad is refused (with an error that is not "not found", so the snapshotter
// logs it and falls back to a normal unpack); the same layer with another
// zTOC, and other layers, are not.
func TestMountRefusesBadLayer(t *testing.T) {
	f := newTestFS(t)
	l, z, other := digest.FromString("layer"), digest.FromString("lying ztoc"), digest.FromString("honest ztoc")
	if err := f.refuseBad(l, z); err != nil {
		t.Fatalf("unmarked layer refused: %v", err)
	}
	// What the background check does on a mismatch (an FS of its own
	// over the same root: the marker persists across restarts).
	if err := background.NewMarkers(f.opts.Root+"/background").MarkBad(l, z, `entry 3 "bin/sh": mode: file table has 04755, tar has 0755`); err != nil {
		t.Fatal(err)
	}
	err := f.refuseBad(l, z)
	if !errors.Is(err, background.ErrBadLayer) || errdefs.IsNotFound(err) {
		t.Fatalf("bad layer: got %v, want ErrBadLayer (not NotFound)", err)
	}
	if want := `"bin/sh"`; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the entry %s", err, want)
	}
	if err := f.refuseBad(l, other); err != nil {
		t.Errorf("the layer with an honest zTOC refused: %v", err)
	}
	if err := f.refuseBad(digest.FromString("another layer"), z); err != nil {
		t.Errorf("another layer refused: %v", err)
	}
}

// TestMountConfig: the [fuse] timeouts and "debug" reach the options layers
// are mounted with.
func TestMountConfig(t *testing.T) {
	f := newTestFS(t)
	f.opts.AttrTimeout, f.opts.EntryTimeout, f.opts.NegativeTimeout = 2*time.Second, 3*time.Second, 4*time.Second
	mc := f.mountConfig(context.Background())
	if mc.AttrTimeout != 2*time.Second || mc.EntryTimeout != 3*time.Second || mc.NegativeTimeout != 4*time.Second {
		t.Errorf("mount config %+v, want the FS's timeouts 2s, 3s, 4s", mc)
	}
	if mc.DebugLog != nil {
		t.Error("go-fuse trace on without FuseDebug")
	}
	f.opts.FuseDebug = true
	if f.mountConfig(context.Background()).DebugLog == nil {
		t.Error("FuseDebug did not turn the go-fuse trace on")
	}
}

// TestSpanOptionsVerifyRetries: the FS's VerifyRetries reach every layer's
// span manager.
func TestSpanOptionsVerifyRetries(t *testing.T) {
	f := newTestFS(t)
	f.opts.VerifyRetries = 4
	if got := f.spanOptions(source.Target{}, &index.Layer{}, digest.FromString("z"), nil).VerifyRetries; got != 4 {
		t.Errorf("span options VerifyRetries %d, want 4", got)
	}
}
