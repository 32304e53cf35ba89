package index

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

// Release deletes what the store keeps for SOCI index d once no snapshot
// uses it: the records choosing it for image manifests, the zTOCs it lists
// (except those inUse reports as needed by a layer still mounted or to be
// mounted again; inUse may be nil), the index blob, and what memory holds
// of it. The caller makes sure no Find or Open of the index is under way.
// A missing file is not an error; other failures are joined and returned.
func (s *Store) Release(ctx context.Context, d digest.Digest, inUse func(ztoc digest.Digest) bool) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("release SOCI index %s: %w", short(string(d)), err)
	}
	idx := s.cachedIndex(d)
	if idx == nil {
		if data, ok := s.readBlob(ctx, d); ok {
			idx, _ = parseIndex(d, data, "", s.lim)
		}
	}
	s.mu.Lock()
	s.forget(d)
	s.mu.Unlock()
	errs := []error{s.removeChoices(ctx, d)}
	if idx != nil {
		for _, z := range idx.ztocList {
			if inUse == nil || !inUse(z.Digest) {
				errs = append(errs, s.RemoveBlob(z.Digest))
			}
		}
	}
	errs = append(errs, s.RemoveBlob(d))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("release SOCI index %s: %w", d, err)
	}
	log.G(ctx).WithField("index", d).Debug("released a SOCI index and its zTOCs")
	return nil
}

// removeChoices deletes the records choosing index d for an image
// manifest. Records are tiny and one per image, so they are scanned.
func (s *Store) removeChoices(ctx context.Context, d digest.Digest) error {
	base := filepath.Join(s.root, "manifests")
	algs, err := os.ReadDir(base)
	if err != nil {
		return fmt.Errorf("list choice records: %w", err)
	}
	var errs []error
	for _, alg := range algs {
		if !alg.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(base, alg.Name()))
		if err != nil {
			errs = append(errs, fmt.Errorf("list choice records: %w", err))
			continue
		}
		for _, f := range files {
			manifest := digest.NewDigestFromEncoded(digest.Algorithm(alg.Name()), f.Name())
			if c, ok := s.readChoice(manifest); !ok || c.Index != d {
				continue // not a record (a temporary file, say) or another index
			}
			p, err := s.choicePath(manifest)
			if err != nil {
				continue
			}
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove choice record: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}
