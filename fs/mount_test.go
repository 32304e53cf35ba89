package fs

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/fs/background"
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
