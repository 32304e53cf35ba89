package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/soci/store"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/containerd/v2/plugins/content/local"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"
	"oras.land/oras-go/v2/content/oci"
)

const (
	standaloneFlag = "standalone"
	formatFlag     = "format"

	formatOCIArchive = "oci-archive"
	formatOCIDir     = "oci-dir"
)

func standaloneFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: standaloneFlag, Usage: "convert without containerd: <src> is an OCI image layout (directory or tar), <dst> the path to write the converted layout to"},
		&cli.StringFlag{Name: formatFlag, Value: formatOCIArchive, Usage: "with --standalone, what to write: oci-archive (a tar) or oci-dir (a directory)"},
	}
}

func checkFormat(f string) error {
	if f != formatOCIArchive && f != formatOCIDir {
		return fmt.Errorf("--%s must be %s or %s, not %q", formatFlag, formatOCIArchive, formatOCIDir, f)
	}
	return nil
}

// convertStandalone converts the OCI layout at src into a SOCI v2 image
// written to dst, with no containerd: the layout is copied to a scratch
// directory that serves as both the source content store and the store the
// SOCI artifacts go to, and the artifact database is a scratch one.
func convertStandalone(c *cli.Context, src, dst string) error {
	format := c.String(formatFlag)
	if err := checkFormat(format); err != nil {
		return err
	}
	ctx := c.Context
	scratch := os.TempDir()
	if _, err := os.Stat(scratch); err != nil {
		scratch = filepath.Dir(filepath.Clean(dst))
	}
	work, err := os.MkdirTemp(scratch, "soci-convert-")
	if err != nil {
		return fmt.Errorf("create scratch directory: %w", err)
	}
	defer os.RemoveAll(work)
	layout := filepath.Join(work, "layout")
	if err := copyLayout(src, layout); err != nil {
		return err
	}
	root, err := layoutRoot(layout)
	if err != nil {
		return fmt.Errorf("input %s: %w", src, err)
	}
	cs, err := local.NewStore(layout)
	if err != nil {
		return fmt.Errorf("open layout %s as a content store: %w", src, err)
	}
	target, err := oci.NewWithContext(ctx, layout)
	if err != nil {
		return fmt.Errorf("open layout %s for writing: %w", src, err)
	}
	if err := os.Mkdir(filepath.Join(work, "db"), 0o700); err != nil {
		return err
	}
	db, err := soci.NewDB(soci.ArtifactsDbPath(filepath.Join(work, "db")))
	if err != nil {
		return fmt.Errorf("scratch artifact database: %w", err)
	}
	opts, err := builderOptions(c, db)
	if err != nil {
		return err
	}
	blobs := &store.SociStore{Store: target}
	builder, err := soci.NewIndexBuilder(cs, blobs, opts...)
	if err != nil {
		return err
	}
	img := images.Image{Name: src, Target: root}
	ps, err := selectPlatforms(ctx, c, cs, img)
	if err != nil {
		return err
	}
	desc, err := builder.Convert(ctx, img, soci.ConvertWithPlatforms(ps...))
	if err != nil {
		return fmt.Errorf("convert %s: %w", src, err)
	}
	if format == formatOCIDir {
		return writeLayoutDir(layout, *desc, dst)
	}
	return writeLayoutArchive(ctx, cs, *desc, dst)
}

// writeLayoutArchive writes the image desc, with every blob it reaches, as
// an OCI layout tar to out (written to a temporary name, then renamed).
func writeLayoutArchive(ctx context.Context, cs content.Store, desc ocispec.Descriptor, out string) error {
	tmp, err := os.CreateTemp(filepath.Dir(filepath.Clean(out)), ".soci-convert-*.tar")
	if err != nil {
		return fmt.Errorf("create output %s: %w", out, err)
	}
	defer os.Remove(tmp.Name())
	err = archive.Export(ctx, cs, tmp, archive.WithManifest(desc), archive.WithSkipDockerManifest())
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write OCI archive %s: %w", out, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}
