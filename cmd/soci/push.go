package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"
	"oras.land/oras-go/v2"
)

const (
	existingIndexFlag = "existing-index"
	quietFlag         = "quiet"
)

func pushCommand() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "push an image's newest SOCI v1 index per platform and its zTOCs to the image's repository",
		ArgsUsage: "<image-ref>",
		Flags: append(append(platformFlags(), registryFlags()...),
			&cli.StringFlag{Name: existingIndexFlag, Value: "warn",
				Usage: "when the registry already has a SOCI index for the image: warn (push anyway), skip, allow (don't check)"},
			&cli.BoolFlag{Name: quietFlag, Aliases: []string{"q"}, Usage: "print only the digests of the pushed indices"},
		),
		Action: push,
	}
}

// pushItem is one platform's index and the manifest it refers to.
type pushItem struct {
	platform string
	index    ocispec.Descriptor
	manifest ocispec.Descriptor
}

func push(c *cli.Context) error {
	ref := c.Args().First()
	if ref == "" || c.NArg() > 1 {
		return errors.New("push: want exactly one image reference")
	}
	existing := c.String(existingIndexFlag)
	if !slices.Contains([]string{"warn", "skip", "allow"}, existing) {
		return fmt.Errorf("--%s must be warn, skip or allow, not %q", existingIndexFlag, existing)
	}
	quiet := c.Bool(quietFlag)
	ctx, s, done, err := open(c.Context, c)
	if err != nil {
		return err
	}
	defer done()
	img, err := s.client.ImageService().Get(ctx, ref)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	cs := s.client.ContentStore()
	ps, err := selectPlatforms(ctx, c, cs, img)
	if err != nil {
		return err
	}
	var items []pushItem
	for _, p := range ps {
		name := platforms.Format(p)
		infos, manifest, err := soci.GetIndexDescriptorCollection(ctx, cs, s.db, img, []ocispec.Platform{p})
		if err != nil {
			return fmt.Errorf("SOCI indices of %s for %s: %w", ref, name, err)
		}
		infos = slices.DeleteFunc(infos, func(i soci.IndexDescriptorInfo) bool { return i.ArtifactType != soci.SociIndexArtifactTypeV1 })
		if len(infos) == 0 {
			return fmt.Errorf("no SOCI v1 index of %s for %s: run `soci create` first", ref, name)
		}
		newest := slices.MaxFunc(infos, func(a, b soci.IndexDescriptorInfo) int { return a.CreatedAt.Compare(b.CreatedAt) })
		items = append(items, pushItem{platform: name, index: newest.Descriptor, manifest: *manifest})
	}
	spec, err := reference.Parse(ref)
	if err != nil {
		return fmt.Errorf("parse %s: %w", ref, err)
	}
	repo, err := repository(ctx, c, spec.Locator)
	if err != nil {
		return err
	}
	opts := oras.DefaultCopyGraphOptions
	opts.Concurrency = 3
	opts.PostCopy = func(_ context.Context, d ocispec.Descriptor) error {
		if !quiet {
			progress("pushed %s %s", d.MediaType, d.Digest)
		}
		return nil
	}
	for _, it := range items {
		if existing != "allow" {
			found, err := remoteIndices(ctx, repo, it.manifest)
			if err != nil {
				return fmt.Errorf("list SOCI indices of %s in %s: %w", it.manifest.Digest, spec.Locator, err)
			}
			if len(found) > 0 && existing == "skip" {
				progress("%s: the registry has SOCI index %s for %s, skipping", it.platform, found[0].Digest, it.manifest.Digest)
				continue
			}
			if len(found) > 0 && !slices.ContainsFunc(found, func(d ocispec.Descriptor) bool { return d.Digest == it.index.Digest }) {
				fmt.Fprintf(os.Stderr, "soci: warning: the registry already has SOCI index %s for %s (%s); pushing %s anyway\n",
					found[0].Digest, it.manifest.Digest, it.platform, it.index.Digest)
			}
		}
		progress("pushing SOCI index %s for %s", it.index.Digest, it.platform)
		if err := oras.CopyGraph(ctx, s.store, repo, it.index, opts); err != nil {
			return fmt.Errorf("push SOCI index %s of %s to %s: %s", it.index.Digest, ref, spec.Locator, oneLine(err))
		}
		if quiet {
			fmt.Fprintln(c.App.Writer, it.index.Digest)
		}
	}
	return nil
}

// remoteIndices lists the SOCI v1 indices the registry has for manifest,
// through the referrers API or its fallback tag.
func remoteIndices(ctx context.Context, repo referrerLister, manifest ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	var out []ocispec.Descriptor
	err := repo.Referrers(ctx, manifest, soci.SociIndexArtifactTypeV1, func(refs []ocispec.Descriptor) error {
		out = append(out, refs...)
		return nil
	})
	return out, err
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// referrerLister lists the referrers of a manifest with an artifact type.
type referrerLister interface {
	Referrers(ctx context.Context, desc ocispec.Descriptor, artifactType string, fn func([]ocispec.Descriptor) error) error
}
