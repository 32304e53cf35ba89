package snapshot

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/fastsoci/soci-snapshotter/internal/crash"
	"github.com/fastsoci/soci-snapshotter/internal/errclass"
	"github.com/fastsoci/soci-snapshotter/internal/mountctx"
)

// layerParallelism bounds the Mounter calls made at once for one request.
const layerParallelism = 8

// remoteLayer is a committed snapshot served by the Mounter.
type remoteLayer struct {
	name       string
	mountpoint string
	labels     map[string]string
}

// prepareRemote is Prepare for a layer that the Mounter may serve lazily. On
// success the layer is committed as target and the returned error wraps
// errdefs.ErrAlreadyExists; otherwise the snapshot stays an ordinary active
// snapshot and its mounts are returned for containerd to unpack into.
func (s *Snapshotter) prepareRemote(ctx context.Context, key, parent, target string, labels map[string]string, opts []snapshots.Opt) ([]mount.Mount, error) {
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(log.Fields{"key": key, "parent": parent, "target": target}))
	exists, err := s.committedExists(ctx, target)
	if err != nil {
		return nil, fmt.Errorf("prepare snapshot %q: %w", key, err)
	}
	if exists {
		return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
	}
	snap, chain, err := s.createRecord(ctx, snapshots.KindActive, key, parent, opts)
	if err != nil {
		return nil, err
	}
	crash.Point(crash.PrepareAfterRecord)
	mountpoint := s.upperPath(snap.ID)
	err = errNotLazy
	if s.mounter != nil && !s.pullAll {
		err = s.mountLayer(ctx, mountpoint, labels)
	}
	if err == nil {
		crash.Point(crash.PrepareAfterMount)
		if err = s.commitRemote(ctx, key, target, labels); err == nil {
			crash.Point(crash.PrepareAfterCommit)
			log.G(ctx).Debug("layer served lazily")
			return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
		}
		if errdefs.IsAlreadyExists(err) {
			// Another Prepare committed the same layer first: drop ours.
			if uerr := s.unmountLayer(ctx, mountpoint); uerr != nil {
				log.G(ctx).WithError(uerr).Warn("could not unmount a layer committed twice")
			}
			s.discard(ctx, key)
			return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
		}
	}
	if err != errNotLazy {
		logFallback(ctx, err)
		if err := s.resetMountpoint(ctx, mountpoint); err != nil {
			s.discard(ctx, key)
			return nil, fmt.Errorf("prepare snapshot %q: fall back to unpacking: %w", key, err)
		}
	}
	if s.puller != nil && (err == errNotLazy || noIndex(err)) {
		perr := s.pullLayer(ctx, key, parent, target, snap, labels, opts)
		if perr == nil || errdefs.IsAlreadyExists(perr) {
			return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
		}
		if !errdefs.IsNotFound(perr) {
			// As the reference: a layer parallel pull fails is not
			// handed to containerd; the pull fails, leaving no snapshot.
			log.G(ctx).WithError(perr).Error("parallel pull and unpack failed")
			s.discard(ctx, key)
			return nil, perr
		}
		log.G(ctx).WithError(perr).Debug("layer not for parallel pull; containerd unpacks it")
		if err := s.resetMountpoint(ctx, mountpoint); err != nil {
			s.discard(ctx, key)
			return nil, fmt.Errorf("prepare snapshot %q: fall back to unpacking: %w", key, err)
		}
	}
	return s.activate(ctx, key, snap, chain)
}

// errNotLazy stands for the Mounter's answer when it is not asked: every
// layer goes to the Puller.
var errNotLazy = fmt.Errorf("parallel pull takes every layer: %w", errdefs.ErrNotFound)

// noIndex tells whether the Mounter declined a layer because its image has
// no SOCI index: errclass.ErrNoIndex, or, from a FUSE host of an earlier
// build (during an upgrade), a NotFound saying "no SOCI index". A plain
// NotFound also covers a layer without zTOC in an indexed image, which
// stays with containerd, as in the reference.
func noIndex(err error) bool {
	return errors.Is(err, errclass.ErrNoIndex) ||
		errdefs.IsNotFound(err) && strings.Contains(err.Error(), NoIndexMessage)
}

// NoIndexMessage is in the Mounter's error for a layer whose image has no
// SOCI index (earlier builds said only this).
const NoIndexMessage = "no SOCI index"

// pullLayer has the Puller unpack the layer into the active snapshot key
// (whose fs directory is mountpoint) and commits it as target, as a local
// layer: containerd's own Commit after its unpack would do the same.
func (s *Snapshotter) pullLayer(ctx context.Context, key, parent, target string, snap storage.Snapshot, labels map[string]string, opts []snapshots.Opt) error {
	lowers := make([]string, len(snap.ParentIDs))
	for i, id := range snap.ParentIDs {
		lowers[i] = s.upperPath(id)
	}
	if err := s.puller.Pull(ctx, s.upperPath(snap.ID), parent, target, lowers, labels); err != nil {
		return err
	}
	crash.Point(crash.PullAfterMove)
	err := s.Commit(ctx, target, key, opts...)
	if errdefs.IsAlreadyExists(err) {
		s.discard(ctx, key) // another Prepare committed the same layer first
		return err
	}
	if err != nil {
		return fmt.Errorf("commit the layer unpacked by parallel pull: %w", err)
	}
	log.G(ctx).Debug("layer unpacked by parallel pull")
	return nil
}

// logFallback says why a layer is unpacked by containerd instead of being
// served lazily. A layer without SOCI index is the ordinary case. The
// messages start as upstream's, which its debugging guide tells operators
// to look for.
func logFallback(ctx context.Context, err error) {
	if errdefs.IsNotFound(err) {
		log.G(ctx).WithError(err).Debug("deferring to container runtime: layer not served lazily; containerd unpacks it")
		return
	}
	log.G(ctx).WithError(err).Warn("failed to prepare remote snapshot: layer not served lazily; containerd unpacks it")
}

// committedExists tells whether a committed snapshot is named name.
func (s *Snapshotter) committedExists(ctx context.Context, name string) (bool, error) {
	var info snapshots.Info
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		var err error
		_, info, _, err = storage.GetInfo(ctx, name)
		return err
	})
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up snapshot %q: %w", name, err)
	}
	return info.Kind == snapshots.KindCommitted, nil
}

// commitRemote commits the active snapshot key, whose fs directory the
// Mounter now serves, as target. The labels of the Prepare call are kept and
// RemoteLabel is added.
func (s *Snapshotter) commitRemote(ctx context.Context, key, target string, labels map[string]string) error {
	committed := make(map[string]string, len(labels)+1)
	maps.Copy(committed, labels)
	committed[RemoteLabel] = remoteLabelValue
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		// The layer's data is remote: nothing to measure on local disk.
		_, err := storage.CommitActive(ctx, key, target, snapshots.Usage{}, snapshots.WithLabels(committed))
		return err
	})
	if err != nil {
		return fmt.Errorf("commit remote snapshot %q as %q: %w", key, target, err)
	}
	return nil
}

// resetMountpoint makes a directory the Mounter failed to serve an empty
// upper directory again: unmounted, and emptied of anything left behind.
func (s *Snapshotter) resetMountpoint(ctx context.Context, mountpoint string) error {
	if err := s.detach(ctx, mountpoint); err != nil {
		return err
	}
	entries, err := os.ReadDir(mountpoint)
	if err != nil {
		return fmt.Errorf("reset %s: %w", mountpoint, err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(mountpoint, e.Name())); err != nil {
			return fmt.Errorf("reset %s: %w", mountpoint, err)
		}
	}
	return nil
}

// remoteChain lists the remote layers among parent and its ancestors. It must
// run inside a metadata transaction.
func (s *Snapshotter) remoteChain(ctx context.Context, parent string) ([]remoteLayer, error) {
	if s.mounter == nil {
		return nil, nil
	}
	var chain []remoteLayer
	for name := parent; name != ""; {
		id, info, _, err := storage.GetInfo(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("read parent %q: %w", name, err)
		}
		if isRemote(info) {
			chain = append(chain, remoteLayer{name: name, mountpoint: s.upperPath(id), labels: info.Labels})
		}
		name = info.Parent
	}
	return chain, nil
}

// committedRemote lists every committed remote snapshot.
func (s *Snapshotter) committedRemote(ctx context.Context) ([]remoteLayer, error) {
	var layers []remoteLayer
	err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if info.Kind != snapshots.KindCommitted || !isRemote(info) {
				return nil
			}
			id, _, _, err := storage.GetInfo(ctx, info.Name)
			if err != nil {
				return err
			}
			layers = append(layers, remoteLayer{name: info.Name, mountpoint: s.upperPath(id), labels: info.Labels})
			return nil
		})
	})
	if errdefs.IsNotFound(err) {
		// Nothing was ever stored: the store has no snapshot bucket yet.
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list remote snapshots: %w", err)
	}
	return layers, nil
}

// ensureLayers makes sure every layer in chain is served, mounting again
// those that fail their check.
func (s *Snapshotter) ensureLayers(ctx context.Context, chain []remoteLayer) error {
	errs := forEachLayer(chain, func(_ int, l remoteLayer) error {
		remounted, err := s.ensureMounted(ctx, l)
		if remounted {
			log.G(ctx).WithField("snapshot", l.name).Warn("remote layer was no longer served; mounted it again")
		}
		return err
	})
	return errors.Join(errs...)
}

// ensureMounted checks one remote layer and mounts it again if the check
// fails. It reports whether it mounted the layer.
func (s *Snapshotter) ensureMounted(ctx context.Context, l remoteLayer) (bool, error) {
	unlock := s.locks.lock(l.mountpoint)
	defer unlock()
	cerr := s.mounter.Check(ctx, l.mountpoint, l.labels)
	if cerr == nil {
		return false, nil
	}
	if err := s.mounter.Mount(ctx, l.mountpoint, l.labels); err != nil {
		return false, &remountError{name: l.name, mountpoint: l.mountpoint, check: cerr, mount: err}
	}
	return true, nil
}

// remountError is a remote layer that failed its check and could not be
// mounted again. It is classified as unavailable on purpose: the snapshot
// exists, so the Mounter's own class (not found, say) would mislead
// containerd. restoreRemote looks at the Mounter's error through it.
type remountError struct {
	name, mountpoint string
	check, mount     error
}

func (e *remountError) Error() string {
	return fmt.Sprintf("remote snapshot %q at %s: check: %v; mount again: %v: %v",
		e.name, e.mountpoint, e.check, e.mount, errdefs.ErrUnavailable)
}

func (e *remountError) Unwrap() error { return errdefs.ErrUnavailable }

// restoreRemote runs at start-up: every remote snapshot whose layer is no
// longer served is mounted again, from local state only (the Mounter sees
// a ctx marked by mountctx.WithLocalOnly and must not wait for a registry).
// A layer that is still served (its check passes) is left alone. A layer
// the Mounter declines (errdefs.ErrNotFound: not to be served lazily any
// more, or not restorable from local state; errdefs.ErrFailedPrecondition:
// found bad, or refused by the current limits) is stale state: it is
// reported by name and skipped, so that no image can stop the daemon from
// starting; its snapshot stays, and the next use mounts it again (then with
// the registry) or fails. Any other failure (the mount itself failing)
// stops start-up unless allowInvalid, as the reference's
// allow_invalid_mounts_on_restart does.
func (s *Snapshotter) restoreRemote(ctx context.Context, allowInvalid bool) error {
	layers, err := s.committedRemote(ctx)
	if err != nil {
		return fmt.Errorf("restore remote snapshots: %w", err)
	}
	local := mountctx.WithLocalOnly(ctx)
	remounted := make([]bool, len(layers))
	errs := forEachLayer(layers, func(i int, l remoteLayer) error {
		var err error
		remounted[i], err = s.ensureMounted(local, l)
		return err
	})
	if err := errors.Join(fatal(errs)...); err != nil && !allowInvalid {
		// Start-up fails: don't leave layers served by a dying process.
		for i, l := range layers {
			if remounted[i] {
				if uerr := s.unmountLayer(ctx, l.mountpoint); uerr != nil {
					log.G(ctx).WithError(uerr).WithField("snapshot", l.name).Warn("could not unmount remote layer")
				}
			}
		}
		return fmt.Errorf("restore remote snapshots: %w", err)
	}
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			log.G(ctx).WithError(err).WithField("snapshot", layers[i].name).
				Warn("remote snapshot not restored; skipped: its next use mounts it again or fails (remove it, or pull its image again)")
		}
	}
	log.G(ctx).WithFields(log.Fields{"snapshots": len(layers), "failed": failed}).Info("restored remote snapshots")
	return nil
}

// fatal returns the errors of errs that make start-up fail: those that are
// not a Mounter declining a layer on purpose.
func fatal(errs []error) []error {
	var out []error
	for _, err := range errs {
		var re *remountError
		if errors.As(err, &re) && (errdefs.IsNotFound(re.mount) || errdefs.IsFailedPrecondition(re.mount)) {
			continue
		}
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

// mountLayer asks the Mounter to serve a layer at mountpoint.
func (s *Snapshotter) mountLayer(ctx context.Context, mountpoint string, labels map[string]string) error {
	unlock := s.locks.lock(mountpoint)
	defer unlock()
	if err := s.mounter.Mount(ctx, mountpoint, labels); err != nil {
		return fmt.Errorf("mount remote layer at %s: %w", mountpoint, err)
	}
	return nil
}

// unmountLayer asks the Mounter to stop serving the layer at mountpoint.
func (s *Snapshotter) unmountLayer(ctx context.Context, mountpoint string) error {
	unlock := s.locks.lock(mountpoint)
	defer unlock()
	if err := s.mounter.Unmount(ctx, mountpoint); err != nil {
		return fmt.Errorf("unmount remote layer at %s: %w", mountpoint, err)
	}
	return nil
}

// forEachLayer runs fn for every layer (with its index), a few at a time, and
// returns the errors in the order of layers.
func forEachLayer(layers []remoteLayer, fn func(int, remoteLayer) error) []error {
	errs := make([]error, len(layers))
	sem := make(chan struct{}, layerParallelism)
	var wg sync.WaitGroup
	for i, l := range layers {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = fn(i, l)
		})
	}
	wg.Wait()
	return errs
}

// mountLocks serialises the Mounter calls for one mountpoint, so that two
// requests finding the same dead layer mount it once.
type mountLocks struct {
	mu    sync.Mutex
	locks map[string]*mountLock
}

type mountLock struct {
	sync.Mutex
	users int
}

// lock takes the lock of mountpoint and returns the function releasing it.
func (l *mountLocks) lock(mountpoint string) (unlock func()) {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = make(map[string]*mountLock)
	}
	ml := l.locks[mountpoint]
	if ml == nil {
		ml = &mountLock{}
		l.locks[mountpoint] = ml
	}
	ml.users++
	l.mu.Unlock()

	ml.Lock()
	return func() {
		ml.Unlock()
		l.mu.Lock()
		if ml.users--; ml.users == 0 {
			delete(l.locks, mountpoint)
		}
		l.mu.Unlock()
	}
}
