package index

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/ztoc"
	fbs "github.com/awslabs/soci-snapshotter/ztoc/fbs/ztoc"
	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/internal/crash"
)

// ErrNoZTOC is wrapped by Open's error when the index has no zTOC for the
// layer. It deliberately does not wrap errdefs.ErrNotFound, so that callers
// can tell "the image has no index" from "the index skips this layer".
var ErrNoZTOC = errors.New("no zTOC for the layer in the SOCI index")

// Open loads the zTOC of an image layer (from local disk, else from the
// content source or the registry, size- and digest-verified and then stored
// on disk), validates and converts
// it. The caller must Close the Layer.
func (s *Store) Open(ctx context.Context, ref string, idx *Index, layer digest.Digest) (*Layer, error) {
	return s.open(ctx, idx, layer, func(desc ocispec.Descriptor) ([]byte, error) {
		return s.ztocBytes(ctx, ref, desc)
	}, false)
}

// open is Open and OpenLocal with load getting the zTOC's verified bytes.
// With local, a zTOC the limits refuse is a failed precondition (see
// OpenLocal).
func (s *Store) open(ctx context.Context, idx *Index, layer digest.Digest, load func(ocispec.Descriptor) ([]byte, error), local bool) (*Layer, error) {
	desc, ok := idx.ZTOC(layer)
	if !ok {
		return nil, fmt.Errorf("layer %s, SOCI index %s: %w", layer, idx.Digest, ErrNoZTOC)
	}
	classify := func(err error) error { return err }
	if local {
		classify = refused
	}
	// Real zTOCs are about 32 KiB per span plus the file list: some MiB
	// per GiB of layer with the default 4 MiB spans.
	if desc.Size > s.lim.MaxZTOCBytes {
		return nil, classify(fmt.Errorf("zTOC %s of layer %s: %d bytes, more than limits.max_ztoc_bytes (%d)",
			desc.Digest, layer, desc.Size, s.lim.MaxZTOCBytes))
	}
	data, err := load(desc)
	if err != nil {
		return nil, fmt.Errorf("zTOC %s of layer %s: %w", desc.Digest, layer, err)
	}
	l, err := s.parseZTOC(ctx, data)
	if err != nil {
		return nil, classify(fmt.Errorf("zTOC %s of layer %s: %w", desc.Digest, layer, err))
	}
	l.DisableXattrs = desc.Annotations[soci.IndexAnnotationDisableXAttrs] == "true"
	s.windowsFromFile(ctx, l, desc.Digest, data)
	return l, nil
}

// windowsFromFile points a gzip Layer's checkpoint windows at the zTOC's
// file in the store (data are its verified bytes), so that the Layer keeps
// no copy of them in memory. When the file cannot be used the Layer keeps
// reading them from memory.
func (s *Store) windowsFromFile(ctx context.Context, l *Layer, d digest.Digest, data []byte) {
	if !l.gzip {
		return
	}
	off, n, err := checkpointsAt(data)
	if err == nil {
		var p string
		if p, err = s.blobPath(d); err == nil {
			err = l.readWindowsFrom(p, int64(len(data)), off, n)
		}
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("ztoc", d).Debug("zTOC checkpoint windows kept in memory")
	}
}

// ztocBytes returns the verified bytes of a zTOC; concurrent callers for one
// zTOC share one download.
func (s *Store) ztocBytes(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	if err := checkDescriptor(desc, s.lim.MaxZTOCBytes); err != nil {
		return nil, fmt.Errorf("zTOC descriptor: %w", err)
	}
	if data, ok := s.readBlob(ctx, desc.Digest); ok {
		return data, nil
	}
	// singleflight re-panics in a new goroutine: guard the work itself.
	ch := s.fetches.DoChan(desc.Digest.String(), func() (any, error) {
		return guard(ctx, "fetch zTOC", func() (any, error) { return s.fetchZTOC(ctx, ref, desc) })
	})
	v, err := wait(ctx, ch)
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}

// fetchZTOC does ztocBytes' shared work: the local copy, else a verified
// copy from the content source or the registry, stored on disk.
func (s *Store) fetchZTOC(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	if data, ok := s.readBlob(ctx, desc.Digest); ok {
		return data, nil
	}
	wctx, cancel := s.workContext(ctx)
	defer cancel()
	if data, ok := s.fromSource(wctx, desc.Digest, desc.Size, desc.Size); ok {
		if err := s.writeBlob(desc.Digest, data, crash.ZTOCBeforeRename); err != nil {
			return nil, err
		}
		return data, nil
	}
	data, err := s.fetchVerified(wctx, ref, desc)
	if err != nil {
		return nil, err
	}
	if err := s.writeBlob(desc.Digest, data, crash.ZTOCBeforeRename); err != nil {
		return nil, err
	}
	return data, nil
}

// ParseZTOC decodes, validates and converts a serialized zTOC within lim
// (zero fields take the defaults). The caller must Close the Layer.
func ParseZTOC(data []byte, lim Limits) (*Layer, error) {
	if _, err := estimateZTOC(data, lim.withDefaults()); err != nil {
		return nil, err
	}
	return buildLayer(data)
}

// parseZTOC is ParseZTOC within the store's limits and its node-wide
// budget of zTOC loads in progress: the load takes its heap estimate from
// the budget (limits.max_ztoc_heap_bytes in all) from before decoding
// until the Layer is built, so that concurrent mounts of huge zTOCs load
// one after another instead of adding up their transient peaks. Only the
// blobs of the loads waiting (at most a quarter of their estimates) are
// held meanwhile.
func (s *Store) parseZTOC(ctx context.Context, data []byte) (*Layer, error) {
	est, err := estimateZTOC(data, s.lim)
	if err != nil {
		return nil, err
	}
	// est is within the budget's capacity (checkFlatbuffer refuses
	// more); min keeps a doomed Acquire from blocking until ctx ends.
	est = min(est, s.lim.MaxZTOCHeapBytes)
	if err := s.loads.Acquire(ctx, est); err != nil {
		return nil, fmt.Errorf("wait for memory to load the zTOC (%d bytes estimated, limits.max_ztoc_heap_bytes %d for all loads at once): %w",
			est, s.lim.MaxZTOCHeapBytes, err)
	}
	defer s.loads.Release(est)
	if s.loading != nil {
		s.loading(est)
	}
	l, err := buildLayer(data)
	if est >= returnHeapAfter {
		// The load's garbage (copies of the flatbuffer, the decoded
		// zTOC) is most of its estimate: give it back to the system now
		// rather than leave the daemon's RSS at its peak for minutes.
		debug.FreeOSMemory()
	}
	return l, err
}

// returnHeapAfter is the estimate of a zTOC load after which the heap's
// free memory is returned to the system at once.
const returnHeapAfter = 64 << 20

// buildLayer decodes a zTOC estimateZTOC accepted, converts it and loads
// its checkpoints.
func buildLayer(data []byte) (*Layer, error) {
	z, err := unmarshalZTOC(data)
	if err != nil {
		return nil, err
	}
	c, err := convert(z)
	if err != nil {
		return nil, err
	}
	return newLayer(z, c)
}

// estimateZTOC bounds the flatbuffer (size, entries, estimated heap) and
// returns its heap estimate.
func estimateZTOC(data []byte, lim Limits) (int64, error) {
	if int64(len(data)) > lim.MaxZTOCBytes {
		return 0, fmt.Errorf("decode zTOC: %d bytes, more than limits.max_ztoc_bytes (%d)", len(data), lim.MaxZTOCBytes)
	}
	return checkFlatbuffer(data, lim)
}

// unmarshalZTOC decodes a flatbuffer estimateZTOC accepted (see
// decodeFlatbuffer: the Ztoc refers to data).
func unmarshalZTOC(data []byte) (*ztoc.Ztoc, error) {
	return decodeFlatbuffer(data)
}

// decodeZTOC bounds the flatbuffer and decodes it.
func decodeZTOC(data []byte, lim Limits) (*ztoc.Ztoc, error) {
	if _, err := estimateZTOC(data, lim); err != nil {
		return nil, err
	}
	return unmarshalZTOC(data)
}

// fetchVerified fetches the blob desc names from the registry and checks
// its size and digest against desc.
func (s *Store) fetchVerified(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	data, err := s.reg.FetchBlob(ctx, ref, desc)
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	if int64(len(data)) != desc.Size {
		return nil, fmt.Errorf("got %d bytes, the index says %d", len(data), desc.Size)
	}
	if err := verify(desc.Digest, data); err != nil {
		return nil, err
	}
	return data, nil
}

// checkpointsAt returns where the gzip checkpoint blob is in a zTOC
// flatbuffer that estimateZTOC accepted: its offset and length.
func checkpointsAt(data []byte) (off int64, n int, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("locate checkpoints: malformed flatbuffer: %v", r)
		}
	}()
	info := fbs.GetRootAsZtoc(data, 0).CompressionInfo(new(fbs.CompressionInfo))
	if info == nil {
		return 0, 0, errors.New("locate checkpoints: no compression info")
	}
	b := info.CheckpointsBytes()
	// b is a slice of data: its capacity tells where it starts.
	off = int64(cap(data) - cap(b))
	if len(b) == 0 || off < 0 || off+int64(len(b)) > int64(len(data)) || &data[off] != &b[0] {
		return 0, 0, errors.New("locate checkpoints: not inside the flatbuffer")
	}
	return off, len(b), nil
}
