package index

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// parseIndex decodes and checks a SOCI index. mediaType is the registry's
// media type for it, or empty when unknown. Every descriptor (config,
// subject, each entry) must have a valid digest of a registered algorithm,
// a size within bounds and a well-formed media type; the image layer digest
// annotation, where present, must be a valid digest, and every zTOC entry
// must have one. Any failure rejects the whole index with an error wrapping
// ErrMalformedIndex (or ErrNotSOCIIndex for another kind of manifest)
// that names the field and the entry.
func parseIndex(d digest.Digest, data []byte, mediaType string, lim Limits) (*Index, error) {
	lim = lim.withDefaults()
	if mediaType != "" && mediaType != ocispec.MediaTypeImageManifest {
		return nil, fmt.Errorf("%s has media type %s: %w", d, short(mediaType), ErrNotSOCIIndex)
	}
	if len(data) > maxIndexBytes {
		return nil, fmt.Errorf("SOCI index %s: %d bytes, more than %d: %w", d, len(data), maxIndexBytes, ErrMalformedIndex)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("decode %s: %w: %w", d, err, ErrNotSOCIIndex)
	}
	if m.MediaType != "" && m.MediaType != ocispec.MediaTypeImageManifest {
		return nil, fmt.Errorf("%s has media type %s: %w", d, short(m.MediaType), ErrNotSOCIIndex)
	}
	switch m.Config.MediaType {
	case soci.SociIndexArtifactTypeV1, soci.SociIndexArtifactTypeV2:
	default:
		return nil, fmt.Errorf("%s has config media type %s: %w", d, short(m.Config.MediaType), ErrNotSOCIIndex)
	}
	idx, err := checkIndex(d, m, lim)
	if err != nil {
		return nil, fmt.Errorf("SOCI index %s: %w: %w", d, err, ErrMalformedIndex)
	}
	idx.size = int64(len(data))
	return idx, nil
}

// checkIndex validates the descriptors of a SOCI index manifest and
// collects its zTOCs.
func checkIndex(d digest.Digest, m ocispec.Manifest, lim Limits) (*Index, error) {
	if n := len(m.Layers); n > lim.MaxIndexEntries {
		return nil, fmt.Errorf("%d entries, more than limits.max_index_entries (%d)", n, lim.MaxIndexEntries)
	}
	if err := checkDescriptor(m.Config, maxIndexBytes); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if m.Subject != nil {
		if err := checkDescriptor(*m.Subject, maxIndexBytes); err != nil {
			return nil, fmt.Errorf("subject: %w", err)
		}
	}
	idx := &Index{Digest: d, Manifest: m, ztocs: map[digest.Digest]ocispec.Descriptor{}}
	for i, l := range m.Layers {
		isZTOC, layer, err := checkEntry(l, lim)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		if !isZTOC {
			// A prefetch artifact naming its layer is fetched by the
			// layer's mount when [prefetch] is on; others are never
			// fetched.
			if l.MediaType == soci.SociPrefetchMediaType && layer != "" {
				if idx.prefetch == nil {
					idx.prefetch = map[digest.Digest]ocispec.Descriptor{}
				}
				if _, dup := idx.prefetch[layer]; !dup {
					idx.prefetch[layer] = l
				}
			}
			continue
		}
		if _, dup := idx.ztocs[layer]; !dup {
			idx.ztocs[layer] = l
			idx.ztocList = append(idx.ztocList, l)
		}
	}
	return idx, nil
}

// checkEntry validates one entry of an index; for a zTOC it returns the
// image layer it describes.
func checkEntry(l ocispec.Descriptor, lim Limits) (isZTOC bool, layer digest.Digest, err error) {
	if err := checkDescriptor(l, lim.MaxZTOCBytes); err != nil {
		return false, "", err
	}
	isZTOC = l.MediaType == soci.SociLayerMediaType
	v, ok := l.Annotations[soci.IndexAnnotationImageLayerDigest]
	switch {
	case ok:
		if err := digest.Digest(v).Validate(); err != nil {
			return false, "", fmt.Errorf("annotation %s: digest %s: %w", soci.IndexAnnotationImageLayerDigest, short(v), err)
		}
	case isZTOC:
		return false, "", fmt.Errorf("zTOC without annotation %s", soci.IndexAnnotationImageLayerDigest)
	}
	if isZTOC && l.Size == 0 {
		return false, "", errors.New("size: an empty zTOC")
	}
	return isZTOC, digest.Digest(v), nil
}

// checkDescriptor validates a descriptor's digest, size and media type.
func checkDescriptor(desc ocispec.Descriptor, maxSize int64) error {
	if err := desc.Digest.Validate(); err != nil {
		return fmt.Errorf("digest %s: %w", short(string(desc.Digest)), err)
	}
	if desc.Size < 0 || desc.Size > maxSize {
		return fmt.Errorf("size %d outside [0, %d]", desc.Size, maxSize)
	}
	if err := checkMediaType(desc.MediaType); err != nil {
		return fmt.Errorf("media type %s: %w", short(desc.MediaType), err)
	}
	return nil
}

// checkMediaType accepts type/subtype as RFC 6838 restricts their names:
// up to 127 characters each, alphanumeric first, then alphanumerics and
// !#$&-^_.+ (no parameters, which no SOCI artifact uses).
func checkMediaType(mt string) error {
	typ, sub, ok := strings.Cut(mt, "/")
	if !ok || !restrictedName(typ) || !restrictedName(sub) {
		return errors.New("not a type/subtype media type")
	}
	return nil
}

func restrictedName(s string) bool {
	if len(s) == 0 || len(s) > 127 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return false
		}
		switch {
		case alnum:
		case c == '!' || c == '#' || c == '$' || c == '&' || c == '-' || c == '^' || c == '_' || c == '.' || c == '+':
		default:
			return false
		}
	}
	return true
}
