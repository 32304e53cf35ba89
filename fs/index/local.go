package index

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ErrNotLocal is wrapped by the errors of FindLocal and OpenLocal when a
// piece (the choice record, the index blob, the zTOC blob) is not on local
// disk. It wraps errdefs.ErrNotFound: the layer is declined, not broken.
var ErrNotLocal = fmt.Errorf("not restorable from local state: %w", errdefs.ErrNotFound)

// FindLocal is Find from local state only: the explicit index's blob, or
// the index recorded for manifest by an earlier Find (for a pull mode still
// enabled), never the registry. It neither waits for nor shares a lookup
// that may reach the registry, and remembers no failure (a later Find may
// still look the image up). A missing piece is an error wrapping
// ErrNotLocal.
func (s *Store) FindLocal(ctx context.Context, manifest, explicit digest.Digest) (*Index, error) {
	if explicit != "" {
		if err := explicit.Validate(); err != nil {
			return nil, fmt.Errorf("SOCI index digest %q: %w: %w", explicit, err, errdefs.ErrInvalidArgument)
		}
	} else if err := manifest.Validate(); err != nil {
		return nil, fmt.Errorf("image manifest digest %q: %w: %w", manifest, err, errdefs.ErrInvalidArgument)
	}
	if a, ok := s.recall(s.findKey(ctx, manifest, explicit)); ok && a.idx != nil {
		return a.idx, nil
	}
	return guard(ctx, "find local SOCI index", func() (*Index, error) {
		if explicit == "" {
			if idx, ok := s.recorded(ctx, manifest); ok {
				return idx, nil
			}
			return nil, fmt.Errorf("SOCI index of image manifest %s: no record on disk for an enabled pull mode, or its index blob is missing: %w", manifest, ErrNotLocal)
		}
		if idx := s.cachedIndex(explicit); idx != nil {
			return idx, nil
		}
		data, ok := s.readBlob(ctx, explicit)
		if !ok {
			return nil, fmt.Errorf("SOCI index %s: no verified blob on disk: %w", explicit, ErrNotLocal)
		}
		idx, err := parseIndex(explicit, data, "", s.lim)
		if err != nil {
			s.dropBlob(ctx, explicit)
			return nil, fmt.Errorf("SOCI index %s on disk: %w: %w", explicit, err, ErrNotLocal)
		}
		return s.cacheIndex(idx), nil
	})
}

// OpenLocal is Open with the zTOC read from local disk only. A missing (or
// corrupt, hence removed) zTOC is an error wrapping ErrNotLocal; a zTOC on
// disk that the current limits refuse is an error wrapping
// errdefs.ErrFailedPrecondition (the state is stale, not broken).
func (s *Store) OpenLocal(ctx context.Context, idx *Index, layer digest.Digest) (*Layer, error) {
	return s.open(ctx, idx, layer, func(desc ocispec.Descriptor) ([]byte, error) {
		if err := checkDescriptor(desc, s.lim.MaxZTOCBytes); err != nil {
			return nil, fmt.Errorf("zTOC descriptor: %w", err)
		}
		data, ok := s.readBlob(ctx, desc.Digest)
		if !ok {
			return nil, fmt.Errorf("no verified blob on disk: %w", ErrNotLocal)
		}
		return data, nil
	}, true)
}

// refused classifies a local zTOC the store no longer accepts (limits
// lowered, say) as a failed precondition; a context error stays as it is.
func refused(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
}
