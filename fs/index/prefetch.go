package index

import (
	"context"
	"sync"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// prefetchParallel bounds the zTOC downloads one Prefetch runs at once.
// They are taken in index order (the image's layer order, in which
// containerd mounts the layers): on a link all connections share, n
// downloads at once each get a n-th of it, so the zTOC of the next mount
// arrives sooner with few of them; two keep one request's round trip
// from idling the link.
const prefetchParallel = 2

// Prefetch starts downloading the zTOCs of idx (the entries parseIndex
// accepted as zTOCs, never other artifacts) that is not on local disk
// yet, several at a time, and returns at once. containerd prepares an
// image's layers one after another, so without it each layer's mount would
// wait for its own zTOC in turn; with it, the first mount waits for its zTOC
// (Open shares the download) while the others arrive meanwhile. It runs
// once per index per Store, detached from ctx's cancellation but bounded
// by the Store's timeout per zTOC; failures are left for Open to report.
// The returned channel is closed when the downloads it started have ended;
// it is nil when an earlier call started them.
func (s *Store) Prefetch(ctx context.Context, ref string, idx *Index) <-chan struct{} {
	s.mu.Lock()
	_, started := s.prefetched[idx.Digest]
	if !started && len(s.prefetched) >= maxCachedIndices {
		// Marks of indices no longer cached: Prefetch would find their
		// zTOCs on disk anyway.
		for d := range s.prefetched {
			if s.indices[d] == nil {
				delete(s.prefetched, d)
			}
		}
	}
	var done chan struct{}
	if !started {
		done = make(chan struct{})
		s.prefetched[idx.Digest] = done
	}
	s.mu.Unlock()
	if started {
		return nil
	}
	ctx = context.WithoutCancel(ctx)
	todo := make(chan ocispec.Descriptor, len(idx.ztocList))
	for _, desc := range idx.ztocList {
		todo <- desc
	}
	close(todo)
	var wg sync.WaitGroup
	for range min(prefetchParallel, len(idx.ztocList)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for desc := range todo {
				// A local copy is enough: reading and verifying it
				// here would hold a copy of every zTOC of the image
				// at once, beside the mount's own.
				if s.haveBlob(desc.Digest, desc.Size) {
					continue
				}
				_, err := guard(ctx, "prefetch zTOC", func() ([]byte, error) { return s.ztocBytes(ctx, ref, desc) })
				if err != nil {
					log.G(ctx).WithError(err).WithField("ztoc", desc.Digest).Debug("zTOC prefetch failed; the layer's mount will retry")
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		log.G(ctx).WithField("index", idx.Digest).Debug("zTOCs of the index are local")
		close(done)
	}()
	return done
}

// ZTOCsLocal returns a channel closed once the zTOC downloads Prefetch
// started for index d have ended (nil: none was started, or they were
// forgotten). A layer's prefetch of spans waits for it: the mounts of the
// image's next layers wait for those zTOCs, containerd's pull ends with
// the last mount, and the container, which reads the prefetched spans, is
// created only after it. On a link both share, spans fetched first would
// only delay the pull.
func (s *Store) ZTOCsLocal(d digest.Digest) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.prefetched[d]
}
