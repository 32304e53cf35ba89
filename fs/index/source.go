package index

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
)

// ContentSource is a store of blobs on this node that the Store reads, by
// digest, before it asks the registry for a SOCI index or a zTOC: with
// [content_store] type = "containerd", containerd's content store, where
// `soci create` leaves the indices and zTOCs it builds. What it returns is
// untrusted input like a registry's answer: the Store checks its size and
// digest and validates it exactly as it does a downloaded blob.
type ContentSource interface {
	// ReadBlob returns the bytes of blob d, refusing one of more than max
	// bytes before reading it. A blob the source does not hold is an
	// error wrapping errdefs.ErrNotFound.
	ReadBlob(ctx context.Context, d digest.Digest, max int64) ([]byte, error)
}

// sourceTimeout bounds one read from the content source, so that a hung
// source delays a mount by at most that before the registry is asked.
const sourceTimeout = 30 * time.Second

// fromSource returns blob d from the content source when there is one and
// it holds a copy of at most max bytes that has digest d (and, when want is
// not negative, exactly want bytes). A missing blob is silent; a failed read
// or a copy that fails a check is a warning, and the caller goes on to the
// registry.
func (s *Store) fromSource(ctx context.Context, d digest.Digest, want, max int64) ([]byte, bool) {
	if s.source == nil {
		return nil, false
	}
	if want >= 0 {
		max = min(max, want)
	}
	rctx, cancel := context.WithTimeout(ctx, sourceTimeout)
	defer cancel()
	lg := log.G(ctx).WithField("digest", d)
	data, err := s.source.ReadBlob(rctx, d, max)
	if err != nil {
		if !isNotFound(err) {
			lg.WithError(err).Warn("cannot read a SOCI artifact from the local content store; fetching it from the registry")
		}
		return nil, false
	}
	if err := checkSourced(d, data, want, max); err != nil {
		lg.WithError(err).Warn("SOCI artifact in the local content store rejected; fetching it from the registry")
		return nil, false
	}
	lg.Debug("SOCI artifact read from the local content store")
	return data, true
}

// checkSourced checks a blob from the content source as one from the
// registry: its size and its digest.
func checkSourced(d digest.Digest, data []byte, want, max int64) error {
	if n := int64(len(data)); n > max || (want >= 0 && n != want) {
		return fmt.Errorf("got %d bytes, want %s", n, sizeWanted(want, max))
	}
	return verify(d, data)
}

func sizeWanted(want, max int64) string {
	if want >= 0 {
		return fmt.Sprint(want)
	}
	return fmt.Sprintf("at most %d", max)
}

// findKey is the key of Find's memo and shared lookups. With a content
// source, whose content (containerd's) is per namespace, the namespace of
// the request is part of it: one namespace's "not found" says nothing
// about another's.
func (s *Store) findKey(ctx context.Context, manifest, explicit digest.Digest) string {
	key := string(manifest) + " " + string(explicit)
	if s.source != nil {
		ns, _ := namespaces.Namespace(ctx)
		key += " " + ns
	}
	return key
}
