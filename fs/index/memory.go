package index

import (
	"github.com/opencontainers/go-digest"
)

// Bounds on what the Store keeps in memory. Everything it keeps is also on
// disk (indices, choices) or cheap to look up again (a "not found"), so an
// entry dropped early costs a disk read or a registry round trip, never a
// failure.
const (
	// maxAnswers bounds the remembered Find results (one per image
	// manifest, with or without an index).
	maxAnswers = 4096
	// maxCachedIndices and maxCachedIndexBytes bound the parsed indices
	// kept; an index is at most maxIndexBytes of JSON.
	maxCachedIndices    = 256
	maxCachedIndexBytes = 32 << 20
)

// makeRoomForAnswer drops expired answers, then arbitrary ones, until
// another fits. It runs under s.mu.
func (s *Store) makeRoomForAnswer() {
	if len(s.answers) < maxAnswers {
		return
	}
	now := s.now()
	for k, a := range s.answers {
		if !a.expires.IsZero() && !now.Before(a.expires) {
			delete(s.answers, k)
		}
	}
	for k := range s.answers {
		if len(s.answers) < maxAnswers {
			break
		}
		delete(s.answers, k)
	}
}

func (s *Store) cachedIndex(d digest.Digest) *Index {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.indices[d]
}

// cacheIndex keeps idx in memory; a concurrent load of the same index wins
// over this one so that callers share one value. Other indices are dropped
// from memory (with the answers and prefetch marks that refer to them)
// while the cache is over its bounds.
func (s *Store) cacheIndex(idx *Index) *Index {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.indices[idx.Digest]; ok {
		return old
	}
	for d := range s.indices {
		if len(s.indices) < maxCachedIndices && s.indexBytes+idx.size <= maxCachedIndexBytes {
			break
		}
		s.forget(d)
	}
	s.indices[idx.Digest] = idx
	s.indexBytes += idx.size
	return idx
}

// forget drops index d from memory: the parsed index, the answers that
// found it and its prefetch mark. It runs under s.mu.
func (s *Store) forget(d digest.Digest) {
	if idx, ok := s.indices[d]; ok {
		s.indexBytes -= idx.size
		delete(s.indices, d)
	}
	delete(s.prefetched, d)
	for k, a := range s.answers {
		if a.idx != nil && a.idx.Digest == d {
			delete(s.answers, k)
		}
	}
}
