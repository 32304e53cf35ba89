package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/soci/store"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"
)

// maxIndexBlobBytes: blobs larger than this are not read as SOCI index
// candidates (an index of max_index_entries zTOCs is far smaller).
const maxIndexBlobBytes = 16 << 20

func rebuildDBCommand() *cli.Command {
	return &cli.Command{
		Name:  "rebuild-db",
		Usage: "rebuild the artifact database from the content store",
		Description: "Drops database entries whose blobs are gone from the content store (--content-store), then adds the\n" +
			"SOCI v1 indices found there, with their zTOCs and prefetch artifacts. Use it after pulling an image\n" +
			"with its indices, after `index rm` with the containerd content store, or when the database was lost.",
		Action: rebuildDB,
	}
}

func rebuildDB(c *cli.Context) error {
	ctx, s, done, err := open(c.Context, c)
	if err != nil {
		return err
	}
	defer done()
	if err := s.db.RemoveOldArtifacts(ctx, s.store); err != nil {
		return fmt.Errorf("drop entries of removed blobs: %w", err)
	}
	candidates, err := blobCandidates(ctx, c, s)
	if err != nil {
		return err
	}
	cs := s.client.ContentStore()
	for _, desc := range candidates {
		if err := addIndexEntries(ctx, s, cs, desc); err != nil {
			fmt.Fprintf(c.App.ErrWriter, "soci: rebuild-db: skipping %s: %v\n", desc.Digest, err)
		}
	}
	return nil
}

// blobCandidates lists the blobs of the artifact store small enough to be a
// SOCI index.
func blobCandidates(ctx context.Context, c *cli.Context, s *session) ([]ocispec.Descriptor, error) {
	kind, err := store.CanonicalizeContentStoreType(store.ContentStoreType(c.String(contentStoreFlag)))
	if err != nil {
		return nil, err
	}
	var out []ocispec.Descriptor
	keep := func(d digest.Digest, size int64) {
		if size >= 10 && size <= maxIndexBlobBytes && d.Validate() == nil {
			out = append(out, ocispec.Descriptor{Digest: d, Size: size})
		}
	}
	if kind == store.ContainerdContentStoreType {
		err := s.client.ContentStore().Walk(ctx, func(info content.Info) error {
			keep(info.Digest, info.Size)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list containerd's content: %w", err)
		}
		return out, nil
	}
	dir, err := store.GetContentStorePath(kind, s.root)
	if err != nil {
		return nil, err
	}
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA512} {
		ents, err := os.ReadDir(filepath.Join(dir, "blobs", alg.String()))
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("list %s: %w", dir, err)
		}
		for _, e := range ents {
			if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
				keep(digest.NewDigestFromEncoded(alg, e.Name()), info.Size())
			}
		}
	}
	return out, nil
}

// addIndexEntries adds desc to the database when it is a SOCI v1 index
// not yet there, with its zTOCs and prefetch artifacts. Blobs that are not
// SOCI v1 indices are ignored.
func addIndexEntries(ctx context.Context, s *session, cs content.Store, desc ocispec.Descriptor) error {
	if _, err := s.db.GetArtifactEntry(desc.Digest.String()); err == nil {
		return nil
	}
	rc, err := s.store.Fetch(ctx, desc)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	head := make([]byte, 1)
	_, err = io.ReadFull(rc, head)
	if err != nil || head[0] != '{' {
		rc.Close()
		return nil
	}
	rest, err := io.ReadAll(io.LimitReader(rc, maxIndexBlobBytes))
	rc.Close()
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	data := append(head, rest...)
	if digest.FromBytes(data) != desc.Digest {
		return nil // not the whole blob or not matching: not ours to trust
	}
	var idx soci.Index
	if soci.UnmarshalIndex(data, &idx) != nil || idx.MediaType != ocispec.MediaTypeImageManifest ||
		idx.ArtifactType != soci.SociIndexArtifactTypeV1 || idx.Subject == nil {
		return nil
	}
	if err := idx.Subject.Digest.Validate(); err != nil {
		return fmt.Errorf("index subject: %w", err)
	}
	ps, err := images.Platforms(ctx, cs, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: idx.Subject.Digest, Size: idx.Subject.Size})
	if err != nil || len(ps) == 0 {
		return fmt.Errorf("platform of image manifest %s: %w", idx.Subject.Digest, orNotFound(err))
	}
	now := time.Now()
	manifest := idx.Subject.Digest.String()
	entries := []*soci.ArtifactEntry{{
		Size: int64(len(data)), Digest: desc.Digest.String(), OriginalDigest: manifest, ImageDigest: manifest,
		Platform: platforms.Format(ps[0]), Type: soci.ArtifactEntryTypeIndex, Location: manifest,
		MediaType: idx.MediaType, ArtifactType: idx.Config.MediaType, CreatedAt: now,
	}}
	for _, b := range idx.Blobs {
		if b.Digest.Validate() != nil {
			return fmt.Errorf("index lists an invalid digest %q", b.Digest)
		}
		layer := b.Annotations[soci.IndexAnnotationImageLayerDigest]
		switch b.MediaType {
		case soci.SociLayerMediaType:
			var span int64
			if v, ok := b.Annotations[soci.IndexAnnotationSociSpanSize]; ok {
				if span, err = strconv.ParseInt(v, 10, 64); err != nil {
					return fmt.Errorf("span size of zTOC %s: %w", b.Digest, err)
				}
			}
			entries = append(entries, &soci.ArtifactEntry{Size: b.Size, Digest: b.Digest.String(), OriginalDigest: layer,
				Type: soci.ArtifactEntryTypeLayer, Location: layer, MediaType: soci.SociLayerMediaType, CreatedAt: now, SpanSize: span})
		case soci.SociPrefetchMediaType:
			entries = append(entries, &soci.ArtifactEntry{Size: b.Size, Digest: b.Digest.String(), OriginalDigest: layer,
				Type: soci.ArtifactEntryTypePrefetch, MediaType: soci.SociPrefetchMediaType, CreatedAt: now})
		}
	}
	for _, e := range entries {
		if err := s.db.WriteArtifactEntry(e); err != nil && !errdefs.IsAlreadyExists(err) {
			return fmt.Errorf("write database entry %s: %w", e.Digest, err)
		}
	}
	return nil
}
