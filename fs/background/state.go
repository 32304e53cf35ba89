package background

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
)

// ErrBadLayer is wrapped by Markers.Bad for a layer whose zTOC was found
// to contradict the verified layer blob.
var ErrBadLayer = errors.New("zTOC contradicts the verified layer")

// Markers are the records the background fetcher keeps per layer and zTOC
// under its state directory: verified/ (the blob hashed to its digest and,
// with a file table, the zTOC matched it) and bad/ (the zTOC contradicts the
// verified blob; the file holds the reason). Without a directory nothing is
// kept.
type Markers struct{ dir string }

// NewMarkers keeps markers under dir ("" keeps none).
func NewMarkers(dir string) Markers { return Markers{dir: dir} }

// maxReason bounds the reason kept in a bad marker.
const maxReason = 1 << 10

// path is the marker of kind for layer served from zTOC ztoc (which may be
// empty); "" when none is kept or a digest is malformed.
func (m Markers) path(kind string, layer, ztoc digest.Digest) string {
	if m.dir == "" || layer.Validate() != nil {
		return ""
	}
	name := layer.Encoded()
	if ztoc != "" {
		if ztoc.Validate() != nil {
			return ""
		}
		name += "+" + ztoc.Algorithm().String() + "-" + ztoc.Encoded()
	}
	return filepath.Join(m.dir, kind, layer.Algorithm().String(), name)
}

// Bad returns an error wrapping ErrBadLayer, with the recorded reason,
// when layer served from ztoc was marked bad, and nil otherwise.
func (m Markers) Bad(layer, ztoc digest.Digest) error {
	p := m.path("bad", layer, ztoc)
	if p == "" {
		return nil
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil { // fail closed: the mount falls back to a normal unpack
		return fmt.Errorf("layer %s with zTOC %s: read bad-layer marker: %w", layer, ztoc, err)
	}
	defer f.Close()
	reason, _ := io.ReadAll(io.LimitReader(f, maxReason))
	return fmt.Errorf("layer %s with zTOC %s was marked bad by an earlier check (%s): %w",
		layer, ztoc, strings.TrimSpace(string(reason)), ErrBadLayer)
}

// MarkBad records that layer served from ztoc contradicts its zTOC, with the
// reason (truncated to 1 KiB): Bad then refuses the pair.
func (m Markers) MarkBad(layer, ztoc digest.Digest, reason string) error {
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	return m.write("bad", layer, ztoc, []byte(reason))
}

func (m Markers) verified(layer, ztoc digest.Digest) bool {
	p := m.path("verified", layer, ztoc)
	if p == "" {
		return false
	}
	_, err := os.Stat(p)
	return err == nil
}

func (m Markers) markVerified(layer, ztoc digest.Digest) error {
	return m.write("verified", layer, ztoc, nil)
}

func (m Markers) write(kind string, layer, ztoc digest.Digest, data []byte) error {
	p := m.path(kind, layer, ztoc)
	if p == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("record %s layer: %w", kind, err)
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		return fmt.Errorf("record %s layer: %w", kind, err)
	}
	return nil
}

// doneKey identifies j's layer and zTOC in Scheduler.done.
func doneKey(j *job) string { return j.layer.Digest.String() + "+" + j.layer.ZTOC.String() }

// alreadyLocal reports whether j's layer was verified whole with its zTOC
// before (by this process or, with a StateDir, an earlier one) and all its
// spans are still cached.
func (s *Scheduler) alreadyLocal(j *job) bool {
	s.mu.Lock()
	verified := s.done[doneKey(j)]
	s.mu.Unlock()
	if !verified && !s.markers.verified(j.layer.Digest, j.layer.ZTOC) {
		return false
	}
	return j.layer.Spans.Complete(j.ctx)
}

// markVerified records that j's layer was verified whole. Failing to is
// logged: the next run then verifies it again.
func (s *Scheduler) markVerified(j *job) {
	if err := s.markers.markVerified(j.layer.Digest, j.layer.ZTOC); err != nil {
		j.log.WithError(err).Warn("cannot record that the layer was verified")
	}
}

// markBad records that j's zTOC contradicts its verified layer, so that new
// mounts of the pair fall back to a normal unpack.
func (s *Scheduler) markBad(j *job, reason error) {
	if err := s.markers.MarkBad(j.layer.Digest, j.layer.ZTOC, reason.Error()); err != nil {
		j.log.WithError(err).Error("cannot record that the layer's zTOC is bad; new mounts will still use it")
	}
}
