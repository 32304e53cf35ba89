package background

import (
	"context"
	"os"
	"path/filepath"
)

// completer is implemented by span managers that can tell whether all of a
// layer is cached.
type completer interface {
	Complete(ctx context.Context) bool
}

// marker is the file recording that the layer's blob was verified whole.
func (s *Scheduler) marker(j *job) string {
	if s.opts.StateDir == "" {
		return ""
	}
	return filepath.Join(s.opts.StateDir, "verified", j.layer.Digest.Algorithm().String(), j.layer.Digest.Encoded())
}

// alreadyLocal reports whether j's layer was verified whole before (by
// this process or, with a StateDir, an earlier one) and all its spans are
// still cached.
func (s *Scheduler) alreadyLocal(j *job) bool {
	c, ok := j.layer.Spans.(completer)
	if !ok {
		return false
	}
	s.mu.Lock()
	verified := s.done[j.layer.Digest.String()]
	s.mu.Unlock()
	if !verified {
		p := s.marker(j)
		if p == "" {
			return false
		}
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return c.Complete(j.ctx)
}

// markVerified records that j's layer was verified whole. Failing to is
// logged: the next run then verifies it again.
func (s *Scheduler) markVerified(j *job) {
	p := s.marker(j)
	if p == "" {
		return
	}
	err := os.MkdirAll(filepath.Dir(p), 0o700)
	if err == nil {
		err = os.WriteFile(p, nil, 0o600)
	}
	if err != nil {
		j.log.WithError(err).Warn("cannot record that the layer was verified")
	}
}
