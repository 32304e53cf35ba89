package fs

import (
	"context"

	"github.com/containerd/log"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
	"github.com/fastsoci/soci-snapshotter/fs/span"
)

// defaultPassthroughBytes bounds the passthrough copies of all layers when
// Options.PassthroughMaxBytes is 0.
const defaultPassthroughBytes = 1 << 30

// passthrough is the passthrough configuration of a layer served by spans
// (nil when passthrough is off): copies in f.backing, made from the span
// cache only.
func (f *FS) passthrough(spans *span.Manager, table span.Table) *layer.Passthrough {
	if f.backing == nil {
		return nil
	}
	return &layer.Passthrough{
		Files: f.backing,
		Local: localSpans{l: spans.Loader(), t: table},
		Refused: func(err error) {
			f.opts.Metrics.PassthroughRefused()
			f.refusedOnce.Do(func() {
				log.L.WithError(err).Warn("FUSE passthrough refused by the kernel; files are read through FUSE")
			})
		},
		Opened: f.opts.Metrics.ObserveOpen,
	}
}

// localSpans reads a layer's uncompressed stream from its cached spans
// only (verified against their zTOC digests when stored), never fetching.
type localSpans struct {
	l *span.Loader
	t span.Table
}

// each calls fn for every span overlapping [off, off+n) with the span's
// index, the offset into it and the length of the overlap, until fn
// returns false; it reports whether all calls returned true.
func (s localSpans) each(off, n int64, fn func(i int, rel, k, at int64) bool) bool {
	if off < 0 || n < 0 || off+n > s.t.UncompressedSize {
		return false
	}
	for at := int64(0); at < n; {
		i := s.t.Find(off + at)
		if i >= len(s.t.Spans) {
			return false
		}
		sp := s.t.Spans[i]
		rel := off + at - sp.UncompressedStart
		k := min(sp.UncompressedEnd-(off+at), n-at)
		if !fn(i, rel, k, at) {
			return false
		}
		at += k
	}
	return true
}

func (s localSpans) ReadLocal(ctx context.Context, p []byte, off int64) bool {
	return s.each(off, int64(len(p)), func(i int, rel, k, at int64) bool {
		return s.l.ReadCached(ctx, i, p[at:at+k], rel)
	})
}

func (s localSpans) Has(ctx context.Context, off, n int64) bool {
	return s.each(off, n, func(i int, _, _, _ int64) bool { return s.l.Has(ctx, i) })
}
