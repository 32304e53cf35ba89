package fs

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
)

// Options configures an FS.
type Options struct {
	// Root is the directory under which the filesystem keeps its state.
	Root string
}

// FS mounts remote layers.
type FS struct {
	root string
}

// New returns an FS keeping its state under opts.Root.
func New(opts Options) *FS {
	return &FS{root: opts.Root}
}

// Mount would mount the layer described by labels at mountpoint. No layer
// can be lazily loaded yet, so it reports that no index was found and the
// caller unpacks the layer instead.
func (f *FS) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	return fmt.Errorf("no SOCI index: %w", errdefs.ErrNotFound)
}

// Check reports whether the layer at mountpoint is still served.
func (f *FS) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	return fmt.Errorf("no lazily loaded layer: %w", errdefs.ErrNotFound)
}

// Unmount releases the layer at mountpoint; with nothing mounted there is
// nothing to do.
func (f *FS) Unmount(ctx context.Context, mountpoint string) error {
	return nil
}
