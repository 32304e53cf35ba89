package index

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// A SOCI v2 index may list, beside a layer's zTOC, a prefetch artifact for
// the layer (`soci create/convert --prefetch-file`): an entry of media
// type soci.SociPrefetchMediaType whose image layer digest annotation names
// the layer. The artifact is a small JSON document: a version ("1.0") and
// inclusive ranges of the layer's span numbers (those of its zTOC) to load
// before the container reads them. This file reads it, as hostile input.

// MaxPrefetchArtifactBytes bounds a prefetch artifact: tens of bytes per
// range of spans, and a layer has at most a few hundred thousand spans.
const MaxPrefetchArtifactBytes = 4 << 20

// prefetchArtifactVersion is the only artifact version there is.
const prefetchArtifactVersion = "1.0"

// ErrPrefetchArtifact is wrapped by errors for a prefetch artifact that is
// not one the daemon can use: malformed, of another version, too large, or
// naming spans the layer does not have.
var ErrPrefetchArtifact = errors.New("invalid prefetch artifact")

// PrefetchArtifact returns the descriptor of the prefetch artifact the
// index lists for an image layer (the first one, when it lists several), or
// false when it lists none.
func (i *Index) PrefetchArtifact(layer digest.Digest) (ocispec.Descriptor, bool) {
	d, ok := i.prefetch[layer]
	return d, ok
}

// PrefetchSpans fetches the prefetch artifact desc of ref (from the content
// source when there is one, else the registry; size- and digest-checked,
// within MaxPrefetchArtifactBytes) and returns the spans it lists for a
// layer of nspans spans: ascending, each once (see ParsePrefetchArtifact).
// Nothing is stored on disk: the artifact is read once per mount.
func (s *Store) PrefetchSpans(ctx context.Context, ref string, desc ocispec.Descriptor, nspans int) ([]int, error) {
	if err := checkDescriptor(desc, MaxPrefetchArtifactBytes); err != nil {
		return nil, fmt.Errorf("prefetch artifact descriptor: %w: %w", err, ErrPrefetchArtifact)
	}
	if desc.MediaType != soci.SociPrefetchMediaType {
		return nil, fmt.Errorf("prefetch artifact %s: media type %s: %w", desc.Digest, short(desc.MediaType), ErrPrefetchArtifact)
	}
	return guard(ctx, "read prefetch artifact", func() ([]int, error) {
		data, err := s.prefetchArtifactBytes(ctx, ref, desc)
		if err != nil {
			return nil, fmt.Errorf("prefetch artifact %s: %w", desc.Digest, err)
		}
		spans, err := ParsePrefetchArtifact(data, nspans)
		if err != nil {
			return nil, fmt.Errorf("prefetch artifact %s: %w", desc.Digest, err)
		}
		return spans, nil
	})
}

// prefetchArtifactBytes returns the verified bytes of the artifact desc.
func (s *Store) prefetchArtifactBytes(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if data, ok := s.fromSource(ctx, desc.Digest, desc.Size, MaxPrefetchArtifactBytes); ok {
		return data, nil
	}
	return s.fetchVerified(ctx, ref, desc)
}

// prefetchDoc is a prefetch artifact as written: span numbers are decoded
// as int64 so that negative and oversized ones are seen, not wrapped.
type prefetchDoc struct {
	Version string `json:"version"`
	Spans   []struct {
		Start *int64 `json:"start_span"`
		End   *int64 `json:"end_span"`
		// priority (optional, "for future use") is ignored.
	} `json:"prefetch_spans"`
}

// ParsePrefetchArtifact decodes a prefetch artifact for a layer of nspans
// spans and returns the spans it lists, ascending and each once (ranges
// may overlap or come in any order). It refuses, with an error wrapping
// ErrPrefetchArtifact, more than MaxPrefetchArtifactBytes, anything but
// one JSON object of version "1.0", and a range without both ends, with
// start > end, or outside [0, nspans). An artifact listing no range gives
// no spans. The work is bounded by the number of ranges and nspans, however
// wide the ranges.
func ParsePrefetchArtifact(data []byte, nspans int) ([]int, error) {
	if len(data) > MaxPrefetchArtifactBytes {
		return nil, fmt.Errorf("%d bytes, more than %d: %w", len(data), MaxPrefetchArtifactBytes, ErrPrefetchArtifact)
	}
	var doc prefetchDoc
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("decode: %w: %w", err, ErrPrefetchArtifact)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("decode: data after the JSON object: %w", ErrPrefetchArtifact)
	}
	if doc.Version != prefetchArtifactVersion {
		return nil, fmt.Errorf("version %q, want %q: %w", short(doc.Version), prefetchArtifactVersion, ErrPrefetchArtifact)
	}
	ranges := make([][2]int, 0, len(doc.Spans))
	for k, r := range doc.Spans {
		switch {
		case r.Start == nil || r.End == nil:
			return nil, fmt.Errorf("range %d: start_span and end_span are required: %w", k, ErrPrefetchArtifact)
		case *r.Start < 0 || *r.Start > *r.End || *r.End >= int64(nspans):
			return nil, fmt.Errorf("range %d: spans %d-%d, the layer has spans 0-%d: %w", k, *r.Start, *r.End, nspans-1, ErrPrefetchArtifact)
		}
		ranges = append(ranges, [2]int{int(*r.Start), int(*r.End)})
	}
	// Merge the ranges before expanding them, so that many wide
	// overlapping ranges cost no more than the spans they cover.
	slices.SortFunc(ranges, func(a, b [2]int) int { return a[0] - b[0] })
	var spans []int
	next := 0 // the first span not listed yet
	for _, r := range ranges {
		for i := max(r[0], next); i <= r[1]; i++ {
			spans = append(spans, i)
		}
		next = max(next, r[1]+1)
	}
	return spans, nil
}
