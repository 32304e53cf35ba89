package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"
)

const refFlag = "ref"

func indexCommand() *cli.Command {
	return &cli.Command{
		Name:  "index",
		Usage: "manage local SOCI indices",
		Subcommands: []*cli.Command{
			{
				Name: "list", Aliases: []string{"ls"}, Usage: "list SOCI indices",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: refFlag, Usage: "only indices of this image"},
					&cli.BoolFlag{Name: quietFlag, Aliases: []string{"q"}, Usage: "print only digests"},
					&cli.StringSliceFlag{Name: platformFlag, Aliases: []string{"p"}, Usage: "only indices of this platform (repeatable)"},
				},
				Action: indexList,
			},
			{Name: "info", Usage: "print a SOCI index as JSON", ArgsUsage: "<digest>", Action: indexInfo},
			{
				Name: "remove", Aliases: []string{"rm"}, Usage: "remove SOCI indices", ArgsUsage: "[<digest>...]",
				Flags:  []cli.Flag{&cli.StringFlag{Name: refFlag, Usage: "remove the indices of this image"}},
				Action: indexRemove,
			},
		},
	}
}

func indexList(c *cli.Context) error {
	ctx, s, done, err := open(c.Context, c)
	if err != nil {
		return err
	}
	defer done()
	var plats []ocispec.Platform
	for _, p := range c.StringSlice(platformFlag) {
		pp, err := platforms.Parse(p)
		if err != nil {
			return fmt.Errorf("parse platform %q: %w", p, err)
		}
		plats = append(plats, platforms.Normalize(pp))
	}
	keep := func(ae *soci.ArtifactEntry) bool {
		return len(plats) == 0 || slices.ContainsFunc(plats, func(p ocispec.Platform) bool { return platforms.Format(p) == ae.Platform })
	}
	if ref := c.String(refFlag); ref != "" {
		img, err := s.client.ImageService().Get(ctx, ref)
		if err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
		ps := plats
		if len(ps) == 0 {
			if ps, err = imagePlatforms(ctx, s, img); err != nil {
				return err
			}
		}
		manifests := map[string]bool{}
		for _, p := range ps {
			d, err := soci.GetImageManifestDescriptor(ctx, s.client.ContentStore(), img.Target, platforms.OnlyStrict(p))
			if err != nil || d == nil {
				return fmt.Errorf("image manifest of %s for %s: %w", ref, platforms.Format(p), orNotFound(err))
			}
			manifests[d.Digest.String()] = true
		}
		keep = func(ae *soci.ArtifactEntry) bool { return manifests[ae.OriginalDigest] }
	}
	var entries []*soci.ArtifactEntry
	err = s.db.Walk(func(ae *soci.ArtifactEntry) error {
		if ae.Type == soci.ArtifactEntryTypeIndex && keep(ae) {
			entries = append(entries, ae)
		}
		return nil
	})
	if err != nil && !errors.Is(err, soci.ErrArtifactBucketNotFound) {
		return fmt.Errorf("read artifact database: %w", err)
	}
	slices.SortFunc(entries, func(a, b *soci.ArtifactEntry) int { return b.CreatedAt.Compare(a.CreatedAt) })
	out := c.App.Writer
	if c.Bool(quietFlag) {
		for _, ae := range entries {
			fmt.Fprintln(out, ae.Digest)
		}
		return nil
	}
	w := tabwriter.NewWriter(out, 8, 8, 4, ' ', 0)
	fmt.Fprint(w, "DIGEST\tSIZE\tIMAGE REF\tPLATFORM\tMEDIA TYPE\tMANIFEST VERSION\tCREATED\t\n")
	is := s.client.ImageService()
	for _, ae := range entries {
		imgs, _ := is.List(ctx, "target.digest=="+ae.ImageDigest)
		names := []string{""}
		if len(imgs) > 0 {
			names = names[:0]
			for _, im := range imgs {
				names = append(names, im.Name)
			}
		}
		for _, n := range names {
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t\n", ae.Digest, ae.Size, n, ae.Platform, ae.MediaType,
				manifestVersion(ae.ArtifactType), age(ae.CreatedAt))
		}
	}
	return w.Flush()
}

func manifestVersion(artifactType string) string {
	switch artifactType {
	case soci.SociIndexArtifactTypeV1:
		return "v1"
	case soci.SociIndexArtifactTypeV2:
		return "v2"
	}
	return ""
}

func age(t time.Time) string {
	if t.IsZero() {
		return "n/a"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

func indexInfo(c *cli.Context) error {
	d, err := digest.Parse(c.Args().First())
	if err != nil {
		return fmt.Errorf("index info: want a digest: %w", err)
	}
	ctx, s, done, err := open(c.Context, c)
	if err != nil {
		return err
	}
	defer done()
	ae, err := s.db.GetArtifactEntry(d.String())
	if err != nil {
		return fmt.Errorf("SOCI index %s: %w", d, err)
	}
	if ae.Type == soci.ArtifactEntryTypeLayer {
		return fmt.Errorf("%s is a zTOC, not a SOCI index: use `soci ztoc info`", d)
	}
	data, err := fetchBlob(ctx, s, ocispec.Descriptor{Digest: d, Size: ae.Size, MediaType: ae.MediaType})
	if err != nil {
		return err
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, data, "", "  "); err != nil {
		return fmt.Errorf("SOCI index %s is not JSON: %w", d, err)
	}
	pretty.WriteByte('\n')
	_, err = pretty.WriteTo(c.App.Writer)
	return err
}

func fetchBlob(ctx context.Context, s *session, desc ocispec.Descriptor) ([]byte, error) {
	rc, err := s.store.Fetch(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("read %s from the content store: %w", desc.Digest, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s from the content store: %w", desc.Digest, err)
	}
	if digest.FromBytes(data) != desc.Digest {
		return nil, fmt.Errorf("content of %s does not match its digest", desc.Digest)
	}
	return data, nil
}

func indexRemove(c *cli.Context) error {
	ref := c.String(refFlag)
	if ref != "" && c.NArg() > 0 {
		return errors.New("index rm: give either digests or --ref, not both")
	}
	if ref == "" && c.NArg() == 0 {
		return errors.New("index rm: give index digests or --ref")
	}
	ctx, s, done, err := open(c.Context, c)
	if err != nil {
		return err
	}
	defer done()
	var targets []string
	if ref != "" {
		img, err := s.client.ImageService().Get(ctx, ref)
		if err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
		found, err := s.db.GetArtifactEntriesByImageDigest(img.Target.Digest.String())
		if err != nil {
			return fmt.Errorf("SOCI indices of %s: %w", ref, err)
		}
		for _, f := range found {
			targets = append(targets, string(f))
		}
	} else {
		for _, a := range c.Args().Slice() {
			d, err := digest.Parse(a)
			if err != nil {
				return fmt.Errorf("index rm: %q is not a digest: %w", a, err)
			}
			ae, err := s.db.GetArtifactEntry(d.String())
			if err != nil {
				return fmt.Errorf("SOCI index %s: %w", d, err)
			}
			if ae.Type != soci.ArtifactEntryTypeIndex {
				return fmt.Errorf("%s is not a SOCI index", d)
			}
			targets = append(targets, d.String())
		}
	}
	for _, t := range targets {
		if err := s.db.RemoveArtifactEntryByIndexDigest([]byte(t)); err != nil {
			return fmt.Errorf("remove SOCI index %s from the database: %w", t, err)
		}
		if err := s.store.Delete(ctx, digest.Digest(t)); err != nil && !isNotFound(err) {
			return fmt.Errorf("remove SOCI index %s from the content store: %w", t, err)
		}
	}
	return nil
}
