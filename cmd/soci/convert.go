package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/soci/store"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v2"
)

func convertCommand() *cli.Command {
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert an image in containerd into a SOCI-enabled image (SOCI index v2)",
		ArgsUsage: "<src-ref> <dst-ref> | --standalone <src-layout> <dst-path>",
		Flags:     append(append(platformFlags(), buildFlags()...), standaloneFlags()...),
		Action:    convert,
	}
}

// checkTagged accepts only a tagged reference without digest: the
// converted image gets a new digest.
func checkTagged(ref string) error {
	spec, err := reference.Parse(ref)
	if err != nil {
		return fmt.Errorf("destination %q: %w", ref, err)
	}
	if spec.Object == "" || strings.Contains(spec.Object, "@") {
		return fmt.Errorf("destination %q must be a tagged reference without digest (registry/repository:tag)", ref)
	}
	return nil
}

func convert(c *cli.Context) error {
	if c.NArg() != 2 {
		return errors.New("convert: want a source and a destination image reference")
	}
	src, dst := c.Args().Get(0), c.Args().Get(1)
	if err := checkFormat(c.String(formatFlag)); err != nil {
		return err
	}
	if c.Bool(standaloneFlag) {
		return convertStandalone(c, src, dst)
	}
	if err := checkTagged(dst); err != nil {
		return err
	}
	in, err := openBuild(c, src)
	if err != nil {
		return err
	}
	defer in.done()
	ctx, s, img, ps, opts := in.ctx, in.s, in.img, in.platforms, in.opts
	is, cs := s.client.ImageService(), s.client.ContentStore()
	// The converted image is an image in containerd, so its manifests and
	// SOCI indices must be in containerd's content store whatever
	// --content-store says.
	blobs, err := store.NewContainerdStore(store.NewStoreConfig(
		store.WithType(store.ContainerdContentStoreType), store.WithContainerdAddress(c.String(addressFlag))))
	if err != nil {
		return err
	}
	builder, err := soci.NewIndexBuilder(cs, blobs, opts...)
	if err != nil {
		return err
	}
	bctx, release, err := blobs.BatchOpen(ctx)
	if err != nil {
		return err
	}
	defer release(context.WithoutCancel(ctx))
	before := indexDigests(s.db)
	progress("converting %s to %s", src, dst)
	desc, err := builder.Convert(bctx, img, soci.ConvertWithPlatforms(ps...), soci.ConvertWithNoGarbageCollectionLabels())
	if err != nil {
		forgetNew(s.db, before)
		return fmt.Errorf("convert %s: %w", src, err)
	}
	out := images.Image{Name: dst, Target: *desc}
	if _, err := is.Create(ctx, out); err != nil {
		if !errors.Is(err, errdefs.ErrAlreadyExists) {
			forgetNew(s.db, before)
			return fmt.Errorf("create image %s: %w", dst, err)
		}
		if _, err := is.Update(ctx, out, "target"); err != nil {
			forgetNew(s.db, before)
			return fmt.Errorf("update image %s: %w", dst, err)
		}
	}
	progress("converted %s to %s (%s)", src, dst, desc.Digest)
	return nil
}

// indexDigests is the set of SOCI index digests in the database.
func indexDigests(db *soci.ArtifactsDb) map[string]bool {
	set := map[string]bool{}
	_ = db.Walk(func(ae *soci.ArtifactEntry) error {
		if ae.Type == soci.ArtifactEntryTypeIndex {
			set[ae.Digest] = true
		}
		return nil
	})
	return set
}

// forgetNew removes the index entries added since before was taken.
func forgetNew(db *soci.ArtifactsDb, before map[string]bool) {
	for d := range indexDigests(db) {
		if !before[d] {
			_ = db.RemoveArtifactEntryByIndexDigest([]byte(d))
		}
	}
}
