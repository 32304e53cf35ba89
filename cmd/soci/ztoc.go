package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"
)

const (
	ztocDigestFlag = "ztoc-digest"
	imageRefFlag   = "image-ref"
	outputFlag     = "output"
)

func ztocCommand() *cli.Command {
	return &cli.Command{
		Name:  "ztoc",
		Usage: "inspect local zTOCs",
		Subcommands: []*cli.Command{
			{
				Name: "list", Aliases: []string{"ls"}, Usage: "list zTOCs",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: ztocDigestFlag, Usage: "only this zTOC"},
					&cli.StringFlag{Name: imageRefFlag, Usage: "only zTOCs of this image's SOCI indices"},
					&cli.BoolFlag{Name: quietFlag, Aliases: []string{"q"}, Usage: "print only digests"},
				},
				Action: ztocList,
			},
			{Name: "info", Usage: "print a zTOC's details as JSON", ArgsUsage: "<digest>", Action: ztocInfo},
			{
				Name: "get-file", Usage: "extract a file from a local layer through its zTOC", ArgsUsage: "<ztoc-digest> <path>",
				Flags:  []cli.Flag{&cli.StringFlag{Name: outputFlag, Aliases: []string{"o"}, Usage: "write the file here instead of stdout"}},
				Action: ztocGetFile,
			},
		},
	}
}

func ztocList(c *cli.Context) error {
	ctx, s, done, err := open(c.Context, c)
	if err != nil {
		return err
	}
	defer done()
	only := c.String(ztocDigestFlag)
	var entries []*soci.ArtifactEntry
	if ref := c.String(imageRefFlag); ref != "" {
		img, err := s.client.ImageService().Get(ctx, ref)
		if err != nil {
			return fmt.Errorf("image %s: %w", ref, err)
		}
		ps, err := imagePlatforms(ctx, s, img)
		if err != nil {
			return err
		}
		seen := map[digest.Digest]bool{}
		for _, p := range ps {
			infos, _, err := soci.GetIndexDescriptorCollection(ctx, s.client.ContentStore(), s.db, img, []ocispec.Platform{p})
			if err != nil {
				continue // platform not local
			}
			for _, info := range infos {
				data, err := fetchBlob(ctx, s, info.Descriptor)
				if err != nil {
					continue // index listed in the database but gone from the store
				}
				var idx soci.Index
				if err := soci.UnmarshalIndex(data, &idx); err != nil {
					return fmt.Errorf("decode SOCI index %s: %w", info.Digest, err)
				}
				for _, b := range idx.Blobs {
					if b.MediaType != soci.SociLayerMediaType || seen[b.Digest] || (only != "" && b.Digest.String() != only) {
						continue
					}
					seen[b.Digest] = true
					ae, err := s.db.GetArtifactEntry(b.Digest.String())
					if err != nil {
						return fmt.Errorf("zTOC %s of %s (%s): %w", b.Digest, ref, platforms.Format(p), err)
					}
					entries = append(entries, ae)
				}
			}
		}
		if only != "" && len(entries) == 0 {
			return fmt.Errorf("zTOC %s is not part of a SOCI index of %s", only, ref)
		}
	} else {
		err := s.db.Walk(func(ae *soci.ArtifactEntry) error {
			if ae.Type == soci.ArtifactEntryTypeLayer && (only == "" || ae.Digest == only) {
				entries = append(entries, ae)
			}
			return nil
		})
		if err != nil && !errors.Is(err, soci.ErrArtifactBucketNotFound) {
			return fmt.Errorf("read artifact database: %w", err)
		}
	}
	if c.Bool(quietFlag) {
		for _, ae := range entries {
			fmt.Fprintln(c.App.Writer, ae.Digest)
		}
		return nil
	}
	w := tabwriter.NewWriter(c.App.Writer, 8, 8, 4, ' ', 0)
	fmt.Fprint(w, "DIGEST\tSIZE\tLAYER DIGEST\t\n")
	for _, ae := range entries {
		fmt.Fprintf(w, "%s\t%d\t%s\t\n", ae.Digest, ae.Size, ae.OriginalDigest)
	}
	return w.Flush()
}

// ztocSummary is `soci ztoc info`'s JSON, field for field the reference's.
type ztocSummary struct {
	Version           string             `json:"version"`
	BuildTool         string             `json:"build_tool"`
	Size              int64              `json:"size"`
	SpanSize          compression.Offset `json:"span_size"`
	NumSpans          compression.SpanID `json:"num_spans"`
	NumFiles          int                `json:"num_files"`
	NumMultiSpanFiles int                `json:"num_multi_span_files"`
	Files             []ztocFile         `json:"files"`
}

type ztocFile struct {
	Filename  string             `json:"filename"`
	Offset    int64              `json:"offset"`
	Size      int64              `json:"size"`
	Type      string             `json:"type"`
	StartSpan compression.SpanID `json:"start_span"`
	EndSpan   compression.SpanID `json:"end_span"`
}

// openedZtoc is a decoded zTOC with the session it was read in.
type openedZtoc struct {
	s      *session
	done   func()
	digest digest.Digest
	toc    *ztoc.Ztoc
	entry  *soci.ArtifactEntry
}

// openZtoc opens the session (setting c.Context to its context) and loads
// the zTOC whose digest is arg. The caller must call done.
func openZtoc(c *cli.Context, cmd, arg string) (*openedZtoc, error) {
	d, err := digest.Parse(arg)
	if err != nil {
		return nil, fmt.Errorf("%s: want a zTOC digest: %w", cmd, err)
	}
	ctx, s, done, err := open(c.Context, c)
	if err != nil {
		return nil, err
	}
	c.Context = ctx
	toc, ae, err := loadZtoc(c, s, d)
	if err != nil {
		done()
		return nil, err
	}
	return &openedZtoc{s: s, done: done, digest: d, toc: toc, entry: ae}, nil
}

// loadZtoc reads and decodes the zTOC d, checking that the database knows
// it as a zTOC.
func loadZtoc(c *cli.Context, s *session, d digest.Digest) (*ztoc.Ztoc, *soci.ArtifactEntry, error) {
	ae, err := s.db.GetArtifactEntry(d.String())
	if err != nil {
		return nil, nil, fmt.Errorf("zTOC %s: %w", d, err)
	}
	if ae.Type == soci.ArtifactEntryTypeIndex {
		return nil, nil, fmt.Errorf("%s is a SOCI index, not a zTOC: use `soci index info`", d)
	}
	data, err := fetchBlob(c.Context, s, ocispec.Descriptor{Digest: d, Size: ae.Size})
	if err != nil {
		return nil, nil, err
	}
	toc, err := ztoc.Unmarshal(bytes.NewReader(data))
	if err != nil {
		return nil, nil, fmt.Errorf("decode zTOC %s: %w", d, err)
	}
	return toc, ae, nil
}

func ztocInfo(c *cli.Context) error {
	z, err := openZtoc(c, "ztoc info", c.Args().First())
	if err != nil {
		return err
	}
	defer z.done()
	d, toc, ae := z.digest, z.toc, z.entry
	zinfo, err := toc.Zinfo()
	if err != nil {
		return fmt.Errorf("zTOC %s checkpoints: %w", d, err)
	}
	defer zinfo.Close()
	sum := ztocSummary{
		Version: string(toc.Version), BuildTool: toc.BuildToolIdentifier, Size: ae.Size,
		SpanSize: zinfo.SpanSize(), NumSpans: toc.MaxSpanID + 1, NumFiles: len(toc.FileMetadata),
		Files: []ztocFile{},
	}
	for _, f := range toc.FileMetadata {
		start := zinfo.UncompressedOffsetToSpanID(f.UncompressedOffset)
		end := zinfo.UncompressedOffsetToSpanID(f.UncompressedOffset + f.UncompressedSize)
		if start != end {
			sum.NumMultiSpanFiles++
		}
		sum.Files = append(sum.Files, ztocFile{Filename: f.Name, Offset: int64(f.UncompressedOffset),
			Size: int64(f.UncompressedSize), Type: f.Type, StartSpan: start, EndSpan: end})
	}
	out, err := json.MarshalIndent(sum, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.App.Writer, "%s\n", out)
	return err
}

func ztocGetFile(c *cli.Context) error {
	if c.NArg() != 2 {
		return errors.New("ztoc get-file: want a zTOC digest and a file path")
	}
	z, err := openZtoc(c, "ztoc get-file", c.Args().Get(0))
	if err != nil {
		return err
	}
	defer z.done()
	ctx, s, d, toc, ae := c.Context, z.s, z.digest, z.toc, z.entry
	layer, err := digest.Parse(ae.OriginalDigest)
	if err != nil {
		return fmt.Errorf("zTOC %s names no layer: %w", d, err)
	}
	ra, err := s.client.ContentStore().ReaderAt(ctx, ocispec.Descriptor{Digest: layer})
	if err != nil {
		return fmt.Errorf("layer %s of zTOC %s is not in containerd's content store: %w", layer, d, err)
	}
	defer ra.Close()
	data, err := toc.ExtractFile(io.NewSectionReader(ra, 0, int64(toc.CompressedArchiveSize)), c.Args().Get(1))
	if err != nil {
		return fmt.Errorf("extract %s with zTOC %s: %w", c.Args().Get(1), d, err)
	}
	if out := c.String(outputFlag); out != "" {
		return os.WriteFile(out, data, 0o644)
	}
	_, err = c.App.Writer.Write(data)
	return err
}
