package index

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/internal/crash"
	"github.com/fastsoci/soci-snapshotter/internal/errclass"
)

// Registry is what the store needs from the registry client.
type Registry interface {
	// FetchManifest returns the manifest dgst of ref's repository (its
	// digest verified) and its media type.
	FetchManifest(ctx context.Context, ref string, dgst digest.Digest) ([]byte, string, error)
	// FetchBlob returns the blob desc of ref's repository, digest-verified.
	FetchBlob(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error)
	// Referrers lists the manifests whose subject is dgst and whose
	// artifact type is artifactType; none is an error wrapping
	// errdefs.ErrNotFound.
	Referrers(ctx context.Context, ref string, dgst digest.Digest, artifactType string) ([]ocispec.Descriptor, error)
}

// ErrNotSOCIIndex is wrapped by errors for a manifest that was expected to be
// a SOCI index but is not one.
var ErrNotSOCIIndex = errors.New("not a SOCI index")

// ErrMalformedIndex is wrapped by errors for a SOCI index that fails
// validation (a bad digest, size, media type, annotation or count); it
// wraps ErrNotSOCIIndex. The image is then pulled normally.
var ErrMalformedIndex = fmt.Errorf("malformed SOCI index: %w", ErrNotSOCIIndex)

// Index is a parsed SOCI index. It is immutable and shared between callers.
type Index struct {
	Digest   digest.Digest
	Manifest ocispec.Manifest // the SOCI index as an OCI image manifest

	ztocs map[digest.Digest]ocispec.Descriptor // by image layer digest
	// ztocList is the zTOC descriptors of ztocs in index order: what
	// Prefetch fetches.
	ztocList []ocispec.Descriptor
	// prefetch are the prefetch artifacts by image layer digest (see
	// PrefetchArtifact); nil when there are none.
	prefetch map[digest.Digest]ocispec.Descriptor
	size     int64 // bytes of JSON, for the memory bound
}

// ZTOC returns the descriptor of the zTOC of an image layer, or false when
// the index does not cover that layer.
func (i *Index) ZTOC(layer digest.Digest) (ocispec.Descriptor, bool) {
	d, ok := i.ztocs[layer]
	return d, ok
}

// Find returns the SOCI index of the image manifest of ref. It tries, in
// order: the explicit index digest when not empty; when V2 is enabled, the
// manifest's annotation com.amazon.soci.index-digest; when V1 is enabled,
// the manifest's referrers of artifact type
// application/vnd.amazon.soci.index.v1+json. Among several v1 indices it
// takes the one with the newest org.opencontainers.image.created annotation
// (missing or unparsable counts as oldest), ties broken by the greatest
// digest. No index is an error wrapping errdefs.ErrNotFound.
//
// Answers are remembered per manifest ("not found" for Options.NegativeTTL),
// concurrent calls share one lookup, and a found index is recorded on disk
// so that after a restart Find needs no registry.
func (s *Store) Find(ctx context.Context, ref string, manifest, explicit digest.Digest) (*Index, error) {
	if explicit != "" {
		if err := explicit.Validate(); err != nil {
			return nil, fmt.Errorf("SOCI index digest %q: %w: %w", explicit, err, errdefs.ErrInvalidArgument)
		}
	} else if err := manifest.Validate(); err != nil {
		return nil, fmt.Errorf("image manifest digest %q: %w: %w", manifest, err, errdefs.ErrInvalidArgument)
	}
	key := s.findKey(ctx, manifest, explicit)
	if a, ok := s.recall(key); ok {
		return a.idx, a.err
	}
	// singleflight re-panics in a new goroutine: guard the work itself.
	ch := s.finds.DoChan(key, func() (any, error) {
		return guard(ctx, "find SOCI index", func() (*Index, error) {
			if a, ok := s.recall(key); ok {
				return a.idx, a.err
			}
			wctx, cancel := s.workContext(ctx)
			defer cancel()
			idx, err := s.find(wctx, ref, manifest, explicit)
			s.remember(key, idx, err)
			return idx, err
		})
	})
	v, err := wait(ctx, ch)
	if err != nil {
		return nil, err
	}
	return v.(*Index), nil
}

// find does the lookup Find describes, without memoization.
func (s *Store) find(ctx context.Context, ref string, manifest, explicit digest.Digest) (*Index, error) {
	if explicit != "" {
		idx, err := s.loadIndex(ctx, ref, explicit)
		if err != nil {
			return nil, fmt.Errorf("SOCI index %s given for %s: %w", explicit, ref, err)
		}
		log.G(ctx).WithField("index", explicit).Debug("using provided soci index digest")
		return idx, nil
	}
	if idx, ok := s.recorded(ctx, manifest); ok {
		return idx, nil
	}
	if !s.v1 && !s.v2 {
		return nil, fmt.Errorf("SOCI index of %s: pull modes soci_v1 and soci_v2 are disabled: %w", manifest, errdefs.ErrNotFound)
	}
	type method struct {
		mode    string
		enabled bool
		find    func(context.Context, string, digest.Digest) (*Index, error)
	}
	// The Debug lines are upstream's, which its debugging guide names.
	for _, m := range []method{{"v2", s.v2, s.findV2}, {"v1", s.v1, s.findV1}} {
		if !m.enabled {
			log.G(ctx).Debugf("soci %s is disabled", m.mode)
			continue
		}
		idx, err := m.find(ctx, ref, manifest)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := s.writeChoice(manifest, choice{Index: idx.Digest, Mode: m.mode}); err != nil {
			log.G(ctx).WithError(err).Warn("could not record the SOCI index of an image")
		}
		msg := "using soci v2 index annotation"
		if m.mode == "v1" {
			msg = "using soci v1 index via referrers API"
		}
		log.G(ctx).WithField("manifest", manifest).WithField("index", idx.Digest).
			WithField("mode", m.mode).Debug(msg)
		return idx, nil
	}
	// With experimental_parallel_pull_as_fallback such images are pulled
	// in parallel (snapshot tells them by the class; older hosts said only
	// "no SOCI index", which snapshot.NoIndexMessage still matches).
	return nil, fmt.Errorf("no SOCI index for image manifest %s of %s: %w", manifest, ref, errclass.ErrNoIndex)
}

// recorded returns the index an earlier run found for manifest, if that
// way of finding it is still enabled and the index is on local disk.
func (s *Store) recorded(ctx context.Context, manifest digest.Digest) (*Index, bool) {
	c, ok := s.readChoice(manifest)
	if !ok || (c.Mode == "v1" && !s.v1) || (c.Mode == "v2" && !s.v2) || (c.Mode != "v1" && c.Mode != "v2") {
		return nil, false
	}
	if idx := s.cachedIndex(c.Index); idx != nil {
		return idx, true
	}
	data, ok := s.readBlob(ctx, c.Index)
	if !ok {
		return nil, false
	}
	idx, err := parseIndex(c.Index, data, "", s.lim)
	if err != nil {
		log.G(ctx).WithError(err).Warn("local SOCI index rejected; looking it up again")
		s.dropBlob(ctx, c.Index)
		return nil, false
	}
	return s.cacheIndex(idx), true
}

// findV2 follows the image manifest's index-digest annotation.
func (s *Store) findV2(ctx context.Context, ref string, manifest digest.Digest) (*Index, error) {
	data, _, err := s.reg.FetchManifest(ctx, ref, manifest)
	if err != nil {
		return nil, fmt.Errorf("fetch image manifest %s: %w", manifest, err)
	}
	if err := verify(manifest, data); err != nil {
		return nil, fmt.Errorf("image manifest %s: %w", manifest, err)
	}
	var m struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("decode image manifest %s: %w", manifest, err)
	}
	v, ok := m.Annotations[soci.ImageAnnotationSociIndexDigest]
	if !ok {
		return nil, fmt.Errorf("image manifest %s has no annotation %s: %w", manifest, soci.ImageAnnotationSociIndexDigest, errdefs.ErrNotFound)
	}
	d, err := digest.Parse(v)
	if err != nil {
		return nil, fmt.Errorf("image manifest %s: annotation %s: %w", manifest, soci.ImageAnnotationSociIndexDigest, err)
	}
	idx, err := s.loadIndex(ctx, ref, d)
	if err != nil {
		return nil, fmt.Errorf("SOCI index %s annotated on %s: %w", d, manifest, err)
	}
	return idx, nil
}

// findV1 chooses among the manifest's SOCI v1 referrers.
func (s *Store) findV1(ctx context.Context, ref string, manifest digest.Digest) (*Index, error) {
	descs, err := s.reg.Referrers(ctx, ref, manifest, soci.SociIndexArtifactTypeV1)
	if err != nil {
		return nil, fmt.Errorf("SOCI v1 referrers of %s: %w", manifest, err)
	}
	d, ok := chooseV1(descs)
	if !ok {
		return nil, fmt.Errorf("no SOCI v1 referrers of %s: %w", manifest, errdefs.ErrNotFound)
	}
	idx, err := s.loadIndex(ctx, ref, d.Digest)
	if err != nil {
		return nil, fmt.Errorf("SOCI index %s referring to %s: %w", d.Digest, manifest, err)
	}
	if sub := idx.Manifest.Subject; sub == nil || sub.Digest != manifest {
		return nil, fmt.Errorf("SOCI index %s listed as a referrer of %s has another subject", d.Digest, manifest)
	}
	return idx, nil
}

// chooseV1 picks the SOCI v1 index among referrers: the newest by the
// org.opencontainers.image.created annotation (RFC 3339; missing or
// unparsable is oldest), ties broken by the greatest digest.
func chooseV1(descs []ocispec.Descriptor) (ocispec.Descriptor, bool) {
	type candidate struct {
		desc    ocispec.Descriptor
		created time.Time
	}
	var cs []candidate
	for _, d := range descs {
		if d.ArtifactType != soci.SociIndexArtifactTypeV1 || d.Digest.Validate() != nil ||
			(d.MediaType != "" && d.MediaType != ocispec.MediaTypeImageManifest) {
			continue
		}
		created, _ := time.Parse(time.RFC3339Nano, d.Annotations[ocispec.AnnotationCreated])
		cs = append(cs, candidate{d, created})
	}
	if len(cs) == 0 {
		return ocispec.Descriptor{}, false
	}
	sort.Slice(cs, func(i, j int) bool {
		if !cs[i].created.Equal(cs[j].created) {
			return cs[i].created.After(cs[j].created)
		}
		return cs[i].desc.Digest > cs[j].desc.Digest
	})
	return cs[0].desc, true
}

// loadIndex returns index d from memory, local disk, the content source or
// the registry (the last two then stored on disk).
func (s *Store) loadIndex(ctx context.Context, ref string, d digest.Digest) (*Index, error) {
	if idx := s.cachedIndex(d); idx != nil {
		return idx, nil
	}
	if data, ok := s.readBlob(ctx, d); ok {
		idx, err := parseIndex(d, data, "", s.lim)
		if err == nil {
			return s.cacheIndex(idx), nil
		}
		// Stored by an older version with looser checks, say.
		log.G(ctx).WithError(err).Warn("local SOCI index rejected; fetching it again")
		s.dropBlob(ctx, d)
	}
	if data, ok := s.fromSource(ctx, d, -1, maxIndexBytes); ok {
		// Its digest is verified: the registry's copy is these bytes too,
		// so a malformed one is as final as a malformed download.
		idx, err := parseIndex(d, data, "", s.lim)
		if err != nil {
			return nil, fmt.Errorf("from the local content store: %w", err)
		}
		if err := s.writeBlob(d, data, crash.IndexBlobBeforeRename); err != nil {
			return nil, err
		}
		return s.cacheIndex(idx), nil
	}
	data, mediaType, err := s.reg.FetchManifest(ctx, ref, d)
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	if err := verify(d, data); err != nil {
		return nil, err
	}
	idx, err := parseIndex(d, data, mediaType, s.lim)
	if err != nil {
		return nil, err
	}
	if err := s.writeBlob(d, data, crash.IndexBlobBeforeRename); err != nil {
		return nil, err
	}
	return s.cacheIndex(idx), nil
}

// isNotFound reports whether err means "no such index".
func isNotFound(err error) bool {
	return err != nil && errdefs.IsNotFound(err)
}
