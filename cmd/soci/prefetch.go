package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"
)

const jsonFlag = "json"

// prefetchCommand inspects the prefetch artifacts that create and convert
// build for --prefetch-file: one per layer, listing the spans that hold
// the named files.
func prefetchCommand() *cli.Command {
	return &cli.Command{
		Name:  "prefetch",
		Usage: "inspect local prefetch artifacts, or make them from a recorded trace",
		Subcommands: []*cli.Command{
			{
				Name: "list", Aliases: []string{"ls"}, Usage: "list prefetch artifacts",
				Flags:  []cli.Flag{&cli.BoolFlag{Name: jsonFlag, Usage: "print a JSON array instead of a table"}},
				Action: prefetchList,
			},
			{
				Name: "info", Usage: "show a prefetch artifact's spans", ArgsUsage: "<digest>",
				Flags:  []cli.Flag{&cli.BoolFlag{Name: jsonFlag, Usage: "also print the artifact as JSON"}},
				Action: prefetchInfo,
			},
			fromTraceCommand(),
		},
	}
}

// prefetchRow is one line of `prefetch ls`; the JSON field names are the
// reference's.
type prefetchRow struct {
	Digest      string
	LayerDigest string
	TotalSpans  int // -1 when the artifact can't be read
	CreatedAt   time.Time
}

// spanCount is the number of spans the artifact's ranges cover.
func spanCount(a *soci.PrefetchArtifact) int {
	n := 0
	for _, r := range a.PrefetchSpans {
		if r.EndSpan >= r.StartSpan {
			n += int(r.EndSpan-r.StartSpan) + 1
		}
	}
	return n
}

func prefetchList(c *cli.Context) error {
	ctx, s, done, err := open(c.Context, c)
	if err != nil {
		return err
	}
	defer done()
	c.Context = ctx
	var entries []*soci.ArtifactEntry
	err = s.db.Walk(func(ae *soci.ArtifactEntry) error {
		if ae.Type == soci.ArtifactEntryTypePrefetch {
			entries = append(entries, ae)
		}
		return nil
	})
	if err != nil && !errors.Is(err, soci.ErrArtifactBucketNotFound) {
		return fmt.Errorf("read artifact database: %w", err)
	}
	rows := []prefetchRow{}
	for _, ae := range entries {
		row := prefetchRow{Digest: ae.Digest, LayerDigest: ae.OriginalDigest, TotalSpans: -1, CreatedAt: ae.CreatedAt}
		if d, err := digest.Parse(ae.Digest); err == nil {
			if a, err := loadPrefetch(c, s, d, ae.Size); err == nil {
				row.TotalSpans = spanCount(a)
			}
		}
		rows = append(rows, row)
	}
	if c.Bool(jsonFlag) {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	return writePrefetchTable(c.App.Writer, rows, time.Now())
}

func writePrefetchTable(out io.Writer, rows []prefetchRow, now time.Time) error {
	w := tabwriter.NewWriter(out, 8, 8, 4, ' ', 0)
	fmt.Fprint(w, "DIGEST\tLAYER DIGEST\tSPANS\tCREATED\t\n")
	for _, r := range rows {
		spans := fmt.Sprint(r.TotalSpans)
		if r.TotalSpans < 0 {
			spans = "N/A"
		}
		created := "n/a"
		if !r.CreatedAt.IsZero() {
			created = now.Sub(r.CreatedAt).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t\n", r.Digest, r.LayerDigest, spans, created)
	}
	return w.Flush()
}

// loadPrefetch reads and decodes prefetch artifact d from the session's
// artifact store, checking its digest.
func loadPrefetch(c *cli.Context, s *session, d digest.Digest, size int64) (*soci.PrefetchArtifact, error) {
	data, err := fetchBlob(c.Context, s, ocispec.Descriptor{MediaType: soci.PrefetchArtifactMediaType, Digest: d, Size: size})
	if err != nil {
		return nil, err
	}
	a, err := soci.UnmarshalPrefetchArtifact(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("decode prefetch artifact %s: %w", d, err)
	}
	return a, nil
}

func prefetchInfo(c *cli.Context) error {
	d, err := digest.Parse(c.Args().First())
	if err != nil {
		return fmt.Errorf("prefetch info: want a prefetch artifact digest: %w", err)
	}
	ctx, s, done, err := open(c.Context, c)
	if err != nil {
		return err
	}
	defer done()
	c.Context = ctx
	ae, err := s.db.GetArtifactEntry(d.String())
	if err != nil {
		return fmt.Errorf("prefetch artifact %s: %w", d, err)
	}
	if ae.Type != soci.ArtifactEntryTypePrefetch {
		return fmt.Errorf("%s is not a prefetch artifact (type: %s)", d, ae.Type)
	}
	a, err := loadPrefetch(c, s, d, ae.Size)
	if err != nil {
		return err
	}
	return writePrefetchInfo(c.App.Writer, d, a, ae, c.Bool(jsonFlag))
}

// writePrefetchInfo prints the summary and span list in the reference's
// layout, and with withJSON the artifact itself, indented.
func writePrefetchInfo(out io.Writer, d digest.Digest, a *soci.PrefetchArtifact, ae *soci.ArtifactEntry, withJSON bool) error {
	fmt.Fprintf(out, "Digest:        %s\n", d)
	fmt.Fprintf(out, "Version:       %s\n", a.Version)
	fmt.Fprintf(out, "Span Ranges:   %d\n", len(a.PrefetchSpans))
	fmt.Fprintf(out, "Layer Digest:  %s\n", ae.OriginalDigest)
	fmt.Fprintf(out, "Size:          %d bytes\n", ae.Size)
	fmt.Fprintf(out, "Created:       %s\n\n", ae.CreatedAt.Format(time.DateTime))
	fmt.Fprintln(out, "Prefetch Spans:")
	for i, r := range a.PrefetchSpans {
		n := 0
		if r.EndSpan >= r.StartSpan {
			n = int(r.EndSpan-r.StartSpan) + 1
		}
		fmt.Fprintf(out, "  [%d] StartSpan: %d, EndSpan: %d (covers %d spans)\n", i, r.StartSpan, r.EndSpan, n)
		if r.Priority != 0 {
			fmt.Fprintf(out, "      Priority: %d\n", r.Priority)
		}
	}
	fmt.Fprintf(out, "\nTotal spans to prefetch: %d\n", spanCount(a))
	if !withJSON {
		return nil
	}
	raw, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "\nRaw JSON:\n%s\n", raw)
	return err
}
