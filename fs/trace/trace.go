// Package trace records, per image, the spans that containers' reads of
// its lazily loaded layers need until the image is ready (recorded
// prefetch, [prefetch] record), and reads such a trace back as hostile
// input. `soci prefetch from-trace` turns a trace into prefetch artifacts.
//
// A trace is a JSON document under <root>/fs/traces/<alg>/<hex>.json (the
// image manifest's digest):
//
//	{"version": "1.0", "manifest": "sha256:…",
//	 "layers": {"sha256:<layer>": {"ztoc": "sha256:…", "span_count": 120,
//	   "prefetch_spans": [{"start_span": 0, "end_span": 3}, …]}}}
//
// Ranges are inclusive, ascending, disjoint and not adjacent.
package trace

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/opencontainers/go-digest"
)

// Version is the only trace version there is.
const Version = "1.0"

// Bounds of a trace: what a recorder writes and Parse accepts.
const (
	// MaxLayers is the most layers a trace holds.
	MaxLayers = 1024
	// MaxRanges is the most span ranges a trace holds, all layers
	// together; a recording that would need more stops adding ranges.
	MaxRanges = 1 << 16
	// MaxBytes bounds a trace file.
	MaxBytes = 8 << 20
	// MaxSpans bounds a layer's span count.
	MaxSpans = 1 << 24
)

// ErrTrace is wrapped by Parse's errors.
var ErrTrace = errors.New("invalid prefetch trace")

// Range is an inclusive range of span numbers.
type Range struct {
	Start int64 `json:"start_span"`
	End   int64 `json:"end_span"`
}

// Layer is what a trace holds for one layer: the zTOC its span numbers
// refer to, that zTOC's span count and the spans read.
type Layer struct {
	ZTOC      digest.Digest `json:"ztoc"`
	SpanCount int64         `json:"span_count"`
	Spans     []Range       `json:"prefetch_spans"`
}

// Trace is one image's recording.
type Trace struct {
	Version  string                  `json:"version"`
	Manifest digest.Digest           `json:"manifest"`
	Layers   map[digest.Digest]Layer `json:"layers"`
}

// Path is where the trace of manifest lives under dir (<root>/fs/traces).
func Path(dir string, manifest digest.Digest) (string, error) {
	if err := manifest.Validate(); err != nil {
		return "", fmt.Errorf("trace path of manifest %q: %w", manifest, err)
	}
	return filepath.Join(dir, manifest.Algorithm().String(), manifest.Encoded()+".json"), nil
}

// Parse decodes and checks a trace: one JSON object of version Version,
// at most MaxBytes, MaxLayers layers and MaxRanges ranges, valid digests,
// span counts in (0, MaxSpans] and, per layer, ranges ascending, disjoint
// and within [0, span_count). Errors wrap ErrTrace.
func Parse(data []byte) (*Trace, error) {
	if len(data) > MaxBytes {
		return nil, fmt.Errorf("%d bytes, more than %d: %w", len(data), MaxBytes, ErrTrace)
	}
	var t Trace
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("decode: %w: %w", err, ErrTrace)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("decode: data after the JSON object: %w", ErrTrace)
	}
	if t.Version != Version {
		return nil, fmt.Errorf("version %.20q, want %q: %w", t.Version, Version, ErrTrace)
	}
	if err := t.Manifest.Validate(); err != nil {
		return nil, fmt.Errorf("manifest digest: %w: %w", err, ErrTrace)
	}
	if len(t.Layers) > MaxLayers {
		return nil, fmt.Errorf("%d layers, more than %d: %w", len(t.Layers), MaxLayers, ErrTrace)
	}
	ranges := 0
	for d, l := range t.Layers {
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("layer digest: %w: %w", err, ErrTrace)
		}
		if err := l.ZTOC.Validate(); err != nil {
			return nil, fmt.Errorf("layer %s: zTOC digest: %w: %w", d, err, ErrTrace)
		}
		if l.SpanCount <= 0 || l.SpanCount > MaxSpans {
			return nil, fmt.Errorf("layer %s: span count %d out of (0, %d]: %w", d, l.SpanCount, MaxSpans, ErrTrace)
		}
		ranges += len(l.Spans)
		if ranges > MaxRanges {
			return nil, fmt.Errorf("more than %d span ranges: %w", MaxRanges, ErrTrace)
		}
		next := int64(0)
		for k, r := range l.Spans {
			if r.Start < next || r.Start > r.End || r.End >= l.SpanCount {
				return nil, fmt.Errorf("layer %s: range %d (%d-%d) not ascending, disjoint and within spans 0-%d: %w",
					d, k, r.Start, r.End, l.SpanCount-1, ErrTrace)
			}
			next = r.End + 1
		}
	}
	return &t, nil
}
