package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"
)

// Build flags shared by create and convert.
const (
	spanSizeFlag     = "span-size"
	minLayerSizeFlag = "min-layer-size"
	optimizationFlag = "optimizations"
	forceFlag        = "force"
	prefetchFlag     = "prefetch-file"
	prefetchJSONFlag = "prefetch-files-json"

	buildToolIdentifier = "AWS SOCI CLI v0.2"
	// imageIndexGCLabel on the image keeps its SOCI index (and through the
	// index's own labels, its zTOCs) while the image exists.
	imageIndexGCLabel = "containerd.io/gc.ref.content.soci-index"
)

func buildFlags() []cli.Flag {
	return []cli.Flag{
		&cli.Int64Flag{Name: spanSizeFlag, Usage: "span size in bytes (uncompressed) of the zTOCs", Value: 1 << 22},
		&cli.Int64Flag{Name: minLayerSizeFlag, Usage: "layers smaller than this (bytes) get no zTOC", Value: 10 << 20},
		&cli.StringSliceFlag{Name: optimizationFlag, Usage: fmt.Sprintf("optional optimizations %v", soci.Optimizations)},
		&cli.BoolFlag{Name: forceFlag, Aliases: []string{"f"}, Usage: "rebuild zTOCs that already exist"},
		&cli.StringSliceFlag{Name: prefetchFlag, Usage: "path of a file in the image to prefetch when a container starts (repeatable, e.g. /app/config.json); " +
			"it needs a zTOC, so it must sit in a layer of at least --min-layer-size"},
		&cli.StringFlag{Name: prefetchJSONFlag, Usage: "JSON file holding an array of paths in the image to prefetch (added to --prefetch-file)"},
	}
}

func createCommand() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "build a SOCI index (v1) per platform for an image in containerd",
		ArgsUsage: "<image-ref>",
		Flags:     append(platformFlags(), buildFlags()...),
		Action:    create,
	}
}

// builderOptions turns the build flags into IndexBuilder options.
func builderOptions(c *cli.Context, db *soci.ArtifactsDb) ([]soci.BuilderOption, error) {
	if c.Int64(spanSizeFlag) <= 0 {
		return nil, fmt.Errorf("--%s must be positive", spanSizeFlag)
	}
	if c.Int64(minLayerSizeFlag) < 0 {
		return nil, fmt.Errorf("--%s must not be negative", minLayerSizeFlag)
	}
	var opts []soci.Optimization
	for _, s := range c.StringSlice(optimizationFlag) {
		o, err := soci.ParseOptimization(s)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	out := []soci.BuilderOption{
		soci.WithSpanSize(c.Int64(spanSizeFlag)),
		soci.WithMinLayerSize(c.Int64(minLayerSizeFlag)),
		soci.WithBuildToolIdentifier(buildToolIdentifier),
		soci.WithOptimizations(opts),
		soci.WithForceRecreateZtocs(c.Bool(forceFlag)),
		soci.WithArtifactsDb(db),
	}
	paths, err := prefetchPaths(c.StringSlice(prefetchFlag), c.String(prefetchJSONFlag))
	if err != nil {
		return nil, err
	}
	if len(paths) > 0 {
		out = append(out, soci.WithPrefetchPaths(paths))
	}
	return out, nil
}

func create(c *cli.Context) error {
	ref := c.Args().First()
	if ref == "" || c.NArg() > 1 {
		return errors.New("create: want exactly one image reference")
	}
	in, err := openBuild(c, ref)
	if err != nil {
		return err
	}
	defer in.done()
	ctx, s, img, ps, opts := in.ctx, in.s, in.img, in.platforms, in.opts
	is, cs := s.client.ImageService(), s.client.ContentStore()
	builder, err := soci.NewIndexBuilder(cs, s.store, opts...)
	if err != nil {
		return err
	}
	// One batch (a containerd lease) for all platforms: nothing built here is
	// collected before the image is labelled, and on error it all goes.
	bctx, release, err := s.store.BatchOpen(ctx)
	if err != nil {
		return err
	}
	defer release(context.WithoutCancel(ctx))
	built := map[string]ocispec.Descriptor{}
	var order []string
	for _, p := range ps {
		name := platforms.Format(p)
		progress("building SOCI index for %s %s", ref, name)
		idx, err := builder.Build(bctx, img, soci.WithPlatform(p), soci.WithNoGarbageCollectionLabel())
		if err != nil {
			forget(s.db, built)
			return fmt.Errorf("create SOCI index of %s for %s: %w", ref, name, err)
		}
		built[name] = idx.Desc
		order = append(order, name)
		progress("created SOCI index %s for %s (%d zTOCs)", idx.Desc.Digest, name, len(idx.Index.Blobs))
	}
	if img.Labels == nil {
		img.Labels = map[string]string{}
	}
	fields := []string{}
	for i, name := range order {
		key := imageIndexGCLabel
		if i > 0 {
			key = fmt.Sprintf("%s.%d", imageIndexGCLabel, i)
		}
		img.Labels[key] = built[name].Digest.String()
		fields = append(fields, "labels."+key)
	}
	if _, err := is.Update(ctx, img, fields...); err != nil {
		forget(s.db, built)
		return fmt.Errorf("label image %s with its SOCI indices: %w", ref, err)
	}
	return nil
}

// forget removes the database entries of indices built by a failed command;
// their content is unreferenced and goes with the batch's lease.
func forget(db *soci.ArtifactsDb, built map[string]ocispec.Descriptor) {
	for _, d := range built {
		_ = db.RemoveArtifactEntryByIndexDigest([]byte(d.Digest.String()))
	}
}

// buildInput is what create and convert start from: the open session, the
// image, the platforms to index and the index builder's options.
type buildInput struct {
	ctx       context.Context
	s         *session
	done      func()
	img       images.Image
	platforms []ocispec.Platform
	opts      []soci.BuilderOption
}

// openBuild opens the session and resolves ref, its platforms and the
// builder options from the command's flags. The caller must call done.
func openBuild(c *cli.Context, ref string) (*buildInput, error) {
	// Flag errors first: they need no containerd.
	if _, err := builderOptions(c, nil); err != nil {
		return nil, err
	}
	ctx, s, done, err := open(c.Context, c)
	if err != nil {
		return nil, err
	}
	in := &buildInput{ctx: ctx, s: s, done: done}
	if in.img, err = s.client.ImageService().Get(ctx, ref); err != nil {
		done()
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	if in.platforms, err = selectPlatforms(ctx, c, s.client.ContentStore(), in.img); err != nil {
		done()
		return nil, err
	}
	if in.opts, err = builderOptions(c, s.db); err != nil {
		done()
		return nil, err
	}
	return in, nil
}
