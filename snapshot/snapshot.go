package snapshot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	continuityfs "github.com/containerd/continuity/fs"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

const (
	// TargetRefLabel is set by containerd on Prepare while unpacking an
	// image: it names the committed snapshot (the layer's chain ID) that the
	// prepared snapshot will become.
	TargetRefLabel = "containerd.io/snapshot.ref"
	// RemoteLabel marks a committed snapshot whose fs directory is a lazily
	// loaded mount served by the Mounter. The snapshotter owns this label:
	// Update never removes it.
	RemoteLabel = "containerd.io/snapshot/remote"
	// remoteLabelValue is the value stored under RemoteLabel.
	remoteLabelValue = "remote snapshot"
)

// Mounter is what the snapshotter needs from a lazy-loading filesystem.
//
// Mount serves the layer described by labels at mountpoint; it must report a
// missing SOCI index with an error for which errdefs.IsNotFound is true, and
// must cope with a stale mount left at mountpoint by an earlier process.
// Check reports whether the layer at mountpoint is still served. Unmount
// stops serving it. The snapshotter never calls two of these methods for the
// same mountpoint at the same time.
type Mounter interface {
	Mount(ctx context.Context, mountpoint string, labels map[string]string) error
	Check(ctx context.Context, mountpoint string, labels map[string]string) error
	Unmount(ctx context.Context, mountpoint string) error
}

// Releaser is what a Mounter may also implement to learn that the snapshot
// mounted at mountpoint has been removed for good: its directory is deleted,
// so the data kept for the layer (cache, indices) may be freed. Unmount alone
// does not say so: it is also called for snapshots that stay and will be
// mounted again. Release may name a mountpoint that was never served, or was
// served by an earlier process; the snapshotter never calls it at the same
// time as another method for the same mountpoint.
type Releaser interface {
	Release(ctx context.Context, mountpoint string) error
}

// Puller unpacks a layer itself (parallel pull and unpack, package pull)
// into dir, an empty directory that the result replaces, checking that the
// layer's diffID over parent (a chain ID, or "" for a base layer) gives
// chainID. lowers are the directories of the layers below, nearest first.
// NotFound says the layer is not for it; any other error fails the layer.
type Puller interface {
	Pull(ctx context.Context, dir, parent, chainID string, lowers []string, labels map[string]string) error
}

// Options configures a Snapshotter.
type Options struct {
	// Root is the directory holding the metadata store and the snapshots.
	// Required.
	Root string
	// Mounter serves layers lazily. Nil disables remote snapshots: every
	// layer is unpacked by containerd.
	Mounter Mounter
	// AllowInvalidMountsOnRestart makes New log and leave a remote snapshot
	// that cannot be mounted again, instead of failing.
	AllowInvalidMountsOnRestart bool
	// Puller, when not nil, unpacks the layers that are not served lazily
	// ([pull_modes.parallel_pull_unpack]); containerd gets AlreadyExists
	// and neither downloads nor unpacks them.
	Puller Puller
	// PullAll makes the Puller take every layer: none is served lazily
	// (parallel_pull_unpack enable = true). Without it the Puller takes
	// the layers the Mounter declines (NotFound).
	PullAll bool
}

// Snapshotter is a containerd snapshotter on overlayfs that can hand layers
// to a Mounter. It is safe for concurrent use.
type Snapshotter struct {
	root    string
	ms      *storage.MetaStore
	mounter Mounter
	puller  Puller
	pullAll bool
	// overlayOptions are added to every overlay mount (userxattr, index=off).
	overlayOptions []string
	// locks serialises Mounter calls per mountpoint.
	locks mountLocks
}

var (
	_ snapshots.Snapshotter = (*Snapshotter)(nil)
	_ snapshots.Cleaner     = (*Snapshotter)(nil)
)

// New opens (or creates) the snapshotter under opts.Root, sweeps what a
// crash may have left (see sweep) and, with a Mounter, mounts again from
// local state every remote snapshot whose layer is no longer served.
func New(ctx context.Context, opts Options) (*Snapshotter, error) {
	if opts.Root == "" {
		return nil, fmt.Errorf("new snapshotter: root is required: %w", errdefs.ErrInvalidArgument)
	}
	root := opts.Root
	if err := checkBackingFS(root); err != nil {
		return nil, fmt.Errorf("new snapshotter under %s: %w", root, err)
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, fmt.Errorf("new snapshotter under %s: open metadata store: %w", root, err)
	}
	s := &Snapshotter{
		root:           root,
		ms:             ms,
		mounter:        opts.Mounter,
		puller:         opts.Puller,
		pullAll:        opts.PullAll && opts.Puller != nil,
		overlayOptions: overlayOptions(ctx, root),
	}
	s.sweep(ctx)
	if s.mounter != nil {
		if err := s.restoreRemote(ctx, opts.AllowInvalidMountsOnRestart); err != nil {
			ms.Close()
			return nil, fmt.Errorf("new snapshotter under %s: %w", root, err)
		}
	}
	return s, nil
}

// checkBackingFS creates the directory layout under root and makes sure the
// filesystem there can hold overlayfs layers.
func checkBackingFS(root string) error {
	if err := os.MkdirAll(filepath.Join(root, "snapshots"), 0o700); err != nil {
		return fmt.Errorf("create snapshots directory: %w", err)
	}
	dtype, err := continuityfs.SupportsDType(root)
	if err != nil {
		return fmt.Errorf("check d_type support: %w", err)
	}
	if !dtype {
		return fmt.Errorf("backing filesystem lacks d_type support (xfs needs ftype=1): %w", errdefs.ErrNotImplemented)
	}
	if err := overlayutils.Supported(root); err != nil {
		return fmt.Errorf("check overlayfs support: %w", err)
	}
	return nil
}

// overlayOptions decides the options every overlay mount needs on this host.
func overlayOptions(ctx context.Context, root string) []string {
	var opts []string
	userxattr, err := overlayutils.NeedsUserXAttr(root)
	if err != nil {
		log.G(ctx).WithError(err).Warnf("cannot tell whether overlayfs needs \"userxattr\"; assuming %v", userxattr)
	}
	if userxattr {
		opts = append(opts, "userxattr")
	}
	// With the index feature on, overlayfs ties a lower layer to the upper
	// directory that first used it and refuses other combinations; layers
	// are shared between many snapshots here, so switch it off when the
	// kernel knows the option.
	if _, err := os.Stat("/sys/module/overlay/parameters/index"); err == nil {
		opts = append(opts, "index=off")
	}
	return opts
}

// Root returns the directory the snapshotter keeps its state in.
func (s *Snapshotter) Root() string { return s.root }

// Close closes the metadata store. Remote layers stay mounted so that running
// containers survive a restart of the daemon.
func (s *Snapshotter) Close() error {
	if err := s.ms.Close(); err != nil {
		return fmt.Errorf("close snapshotter under %s: %w", s.root, err)
	}
	return nil
}

// Stat returns the info of the snapshot named key.
func (s *Snapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	var info snapshots.Info
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return snapshots.Info{}, fmt.Errorf("stat snapshot %q: %w", key, err)
	}
	return info, nil
}

// Update changes the labels of a snapshot. RemoteLabel survives any update.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	var updated snapshots.Info
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, old, _, err := storage.GetInfo(ctx, info.Name)
		if err != nil {
			return err
		}
		if updated, err = storage.UpdateInfo(ctx, info, fieldpaths...); err != nil {
			return err
		}
		marker, remote := old.Labels[RemoteLabel]
		if !remote || updated.Labels[RemoteLabel] == marker {
			return nil
		}
		keep := snapshots.Info{Name: info.Name, Labels: map[string]string{RemoteLabel: marker}}
		updated, err = storage.UpdateInfo(ctx, keep, "labels."+RemoteLabel)
		return err
	})
	if err != nil {
		return snapshots.Info{}, fmt.Errorf("update snapshot %q: %w", info.Name, err)
	}
	return updated, nil
}

// Usage returns the disk usage of a snapshot: measured now for an active
// snapshot, as recorded at commit time otherwise.
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		id    string
		info  snapshots.Info
		usage snapshots.Usage
	)
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	})
	if err != nil {
		return snapshots.Usage{}, fmt.Errorf("usage of snapshot %q: %w", key, err)
	}
	if info.Kind != snapshots.KindActive {
		return usage, nil
	}
	du, err := continuityfs.DiskUsage(ctx, s.upperPath(id))
	if err != nil {
		return snapshots.Usage{}, fmt.Errorf("usage of snapshot %q: %w", key, err)
	}
	return snapshots.Usage(du), nil
}

// Walk calls fn for every snapshot matching the filters; an empty store
// has none.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
	if errdefs.IsNotFound(err) {
		// Nothing was ever stored: the store has no snapshot bucket yet.
		return nil
	}
	if err != nil {
		return fmt.Errorf("walk snapshots: %w", err)
	}
	return nil
}

// snapshotsDir holds one directory per snapshot ID.
func (s *Snapshotter) snapshotsDir() string { return filepath.Join(s.root, "snapshots") }

// upperPath is a snapshot's data: the overlay upper directory of an active
// snapshot, a layer once committed, the mountpoint of a remote layer.
func (s *Snapshotter) upperPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "fs")
}

// workPath is overlayfs's work directory of an active snapshot.
func (s *Snapshotter) workPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "work")
}

// isRemote tells whether info describes a lazily loaded layer.
func isRemote(info snapshots.Info) bool {
	_, ok := info.Labels[RemoteLabel]
	return ok
}
