package index

import (
	"context"
	"sync"

	"github.com/containerd/log"
)

// prefetchParallel bounds the zTOC downloads one Prefetch runs at once.
const prefetchParallel = 8

// Prefetch starts downloading the zTOCs of idx (the entries parseIndex
// accepted as zTOCs, never other artifacts) that is not on local disk
// yet, several at a time, and returns at once. containerd prepares an
// image's layers one after another, so without it each layer's mount would
// wait for its own zTOC in turn; with it, the first mount waits for its zTOC
// (Open shares the download) while the others arrive meanwhile. It runs
// once per index per Store, detached from ctx's cancellation but bounded
// by the Store's timeout per zTOC; failures are left for Open to report.
func (s *Store) Prefetch(ctx context.Context, ref string, idx *Index) {
	s.mu.Lock()
	started := s.prefetched[idx.Digest]
	if !started && len(s.prefetched) >= maxCachedIndices {
		// Marks of indices no longer cached: Prefetch would find their
		// zTOCs on disk anyway.
		for d := range s.prefetched {
			if s.indices[d] == nil {
				delete(s.prefetched, d)
			}
		}
	}
	s.prefetched[idx.Digest] = true
	s.mu.Unlock()
	if started {
		return
	}
	ctx = context.WithoutCancel(ctx)
	slots := make(chan struct{}, prefetchParallel)
	var wg sync.WaitGroup
	for _, desc := range idx.ztocList {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			// A local copy is enough: reading and verifying it here
			// would hold a copy of every zTOC of the image at once,
			// beside the mount's own.
			if s.haveBlob(desc.Digest, desc.Size) {
				return
			}
			_, err := guard(ctx, "prefetch zTOC", func() ([]byte, error) { return s.ztocBytes(ctx, ref, desc) })
			if err != nil {
				log.G(ctx).WithError(err).WithField("ztoc", desc.Digest).Debug("zTOC prefetch failed; the layer's mount will retry")
			}
		}()
	}
	go func() {
		wg.Wait()
		log.G(ctx).WithField("index", idx.Digest).Debug("zTOCs of the index are local")
	}()
}
