package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"
	"oras.land/oras-go/v2"
)

const (
	existingIndexFlag        = "existing-index"
	quietFlag                = "quiet"
	maxConcurrentUploadsFlag = "max-concurrent-uploads"
	snapshotterFlag          = "snapshotter"

	// defaultMaxConcurrentUploads is the reference's default (and oras's):
	// how many blobs are uploaded at once.
	defaultMaxConcurrentUploads = 3
)

func pushCommand() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "push an image's newest SOCI v1 index per platform and its zTOCs to the image's repository",
		ArgsUsage: "<image-ref>",
		Description: "Progress goes to stdout, one line per artifact, as the reference CLI prints it:\n" +
			"  pushing soci index with digest: D / pushing artifact with digest: D /\n" +
			"  successfully pushed artifact with digest: D / skipped artifact with digest: D\n" +
			"With --quiet only the digest of each pushed SOCI index is printed.",
		Flags: append(append(platformFlags(), registryFlags()...),
			&cli.StringFlag{Name: existingIndexFlag, Value: "warn",
				Usage: "when the registry already has a SOCI index for the image: warn (push anyway), skip, allow (don't check)"},
			&cli.Uint64Flag{Name: maxConcurrentUploadsFlag, Value: defaultMaxConcurrentUploads,
				Usage: fmt.Sprintf("how many blobs to upload at once (0: the default, %d)", defaultMaxConcurrentUploads)},
			&cli.StringFlag{Name: snapshotterFlag, EnvVars: []string{"CONTAINERD_SNAPSHOTTER"},
				Usage: "accepted for compatibility with the reference CLI; push does not use it"},
			&cli.BoolFlag{Name: quietFlag, Aliases: []string{"q"}, Usage: "print only the digests of the pushed indices"},
		),
		Action: push,
	}
}

// uploadConcurrency turns --max-concurrent-uploads into oras's concurrency:
// 0 means the default, and so does a value too large for an int (ok is
// false then, for a warning).
func uploadConcurrency(v uint64) (n int, ok bool) {
	switch {
	case v == 0:
		return defaultMaxConcurrentUploads, true
	case v > math.MaxInt:
		return defaultMaxConcurrentUploads, false
	}
	return int(v), true
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
	out := c.App.Writer
	quiet := c.Bool(quietFlag)
	concurrency, ok := uploadConcurrency(c.Uint64(maxConcurrentUploadsFlag))
	if !ok && !quiet {
		fmt.Fprintf(out, "warning: --%s=%d is too large; using %d\n", maxConcurrentUploadsFlag, c.Uint64(maxConcurrentUploadsFlag), concurrency)
	}
	ctx, s, done, err := open(c.Context, c)
	if err != nil {
		return err
	}
	defer done()
	img, err := s.client.ImageService().Get(ctx, ref)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	items, err := pushItems(ctx, c, s, img)
	if err != nil {
		return err
	}
	spec, err := reference.Parse(ref)
	if err != nil {
		return fmt.Errorf("parse %s: %w", ref, err)
	}
	repo, err := repository(ctx, registryOptionsFrom(c), spec.Locator)
	if err != nil {
		return err
	}
	opts := oras.DefaultCopyGraphOptions
	opts.Concurrency = concurrency
	say := func(format string, args ...any) error {
		if !quiet {
			fmt.Fprintf(out, format+"\n", args...)
		}
		return nil
	}
	opts.PreCopy = func(_ context.Context, d ocispec.Descriptor) error {
		return say("pushing artifact with digest: %v", d.Digest)
	}
	opts.PostCopy = func(_ context.Context, d ocispec.Descriptor) error {
		return say("successfully pushed artifact with digest: %v", d.Digest)
	}
	opts.OnCopySkipped = func(_ context.Context, d ocispec.Descriptor) error {
		return say("skipped artifact with digest: %v", d.Digest)
	}
	for _, it := range items {
		if existing != "allow" {
			say("checking if a soci index already exists in remote repository...")
			found, err := remoteIndices(ctx, repo, it.manifest)
			if err != nil {
				return fmt.Errorf("list SOCI indices of %s in %s: %w", it.manifest.Digest, spec.Locator, err)
			}
			if len(found) > 0 && existing == "skip" {
				say("%s: skipping pushing artifacts for image manifest: %s", foundMessage(found), it.manifest.Digest)
				continue
			}
			if len(found) > 0 && !slices.ContainsFunc(found, func(d ocispec.Descriptor) bool { return d.Digest == it.index.Digest }) {
				fmt.Fprintf(out, "[WARN] %s: pushing index anyway\n", foundMessage(found))
			}
		}
		if quiet {
			fmt.Fprintln(out, it.index.Digest)
		} else {
			say("pushing soci index with digest: %v", it.index.Digest)
		}
		if err := oras.CopyGraph(ctx, s.store, repo, it.index, opts); err != nil {
			return fmt.Errorf("push SOCI index %s of %s (%s) to %s: %s", it.index.Digest, ref, it.platform, spec.Locator, oneLine(err))
		}
	}
	return nil
}

// foundMessage says which SOCI indices the registry already has.
func foundMessage(found []ocispec.Descriptor) string {
	if len(found) > 1 {
		return "multiple soci indices found in remote repository"
	}
	return "soci index found in remote repository with digest: " + found[0].Digest.String()
}

// pushItems finds, per platform push works on, the newest local SOCI v1
// index and the image manifest it belongs to.
func pushItems(ctx context.Context, c *cli.Context, s *session, img images.Image) ([]pushItem, error) {
	cs := s.client.ContentStore()
	ps, err := selectPlatforms(ctx, c, cs, img)
	if err != nil {
		return nil, err
	}
	var items []pushItem
	warnedV2 := false
	for _, p := range ps {
		name := platforms.Format(p)
		infos, manifest, err := soci.GetIndexDescriptorCollection(ctx, cs, s.db, img, []ocispec.Platform{p})
		if err != nil {
			return nil, fmt.Errorf("SOCI indices of %s for %s: %w", img.Name, name, err)
		}
		n := len(infos)
		infos = slices.DeleteFunc(infos, func(i soci.IndexDescriptorInfo) bool { return i.ArtifactType != soci.SociIndexArtifactTypeV1 })
		if n > len(infos) && !warnedV2 {
			warnedV2 = true
			fmt.Fprintln(c.App.Writer, "[WARN] SOCI v2 indices are not pushed by soci push: push the converted image itself (nerdctl push, finch push)")
		}
		if len(infos) == 0 {
			return nil, fmt.Errorf("no SOCI v1 index of %s for %s: run `soci create` first", img.Name, name)
		}
		newest := slices.MaxFunc(infos, func(a, b soci.IndexDescriptorInfo) int { return a.CreatedAt.Compare(b.CreatedAt) })
		items = append(items, pushItem{platform: name, index: newest.Descriptor, manifest: *manifest})
	}
	return items, nil
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
