package main

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

const (
	platformFlag     = "platform"
	allPlatformsFlag = "all-platforms"
)

func platformFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: platformFlag, Aliases: []string{"p"}, Usage: "platform to work on (repeatable), e.g. linux/amd64"},
		&cli.BoolFlag{Name: allPlatformsFlag, Usage: "work on every platform of the image"},
	}
}

// selectPlatforms returns the platforms a command works on: all of the
// image's with --all-platforms, the --platform list, or else the image's own
// platform when it is a single manifest, or the host's default platform.
func selectPlatforms(ctx context.Context, c *cli.Context, cs content.Store, img images.Image) ([]ocispec.Platform, error) {
	if c.Bool(allPlatformsFlag) {
		ps, err := images.Platforms(ctx, cs, img.Target)
		if err != nil {
			return nil, fmt.Errorf("list platforms of %s: %w", img.Name, err)
		}
		return dedupe(ps), nil
	}
	var ps []ocispec.Platform
	for _, s := range c.StringSlice(platformFlag) {
		p, err := platforms.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("parse platform %q: %w", s, err)
		}
		ps = append(ps, platforms.Normalize(p))
	}
	if len(ps) > 0 {
		return dedupe(ps), nil
	}
	if images.IsManifestType(img.Target.MediaType) {
		own, err := images.Platforms(ctx, cs, img.Target)
		if err == nil && len(own) == 1 {
			return own, nil
		}
	}
	return []ocispec.Platform{platforms.DefaultSpec()}, nil
}

func dedupe(ps []ocispec.Platform) []ocispec.Platform {
	seen := map[string]bool{}
	var out []ocispec.Platform
	for _, p := range ps {
		p = platforms.Normalize(p)
		if k := platforms.Format(p); !seen[k] {
			seen[k] = true
			out = append(out, p)
		}
	}
	return out
}

// isTerminal says whether f is a terminal: progress is shown only there.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progress prints to stderr when stderr is a terminal, else nothing.
func progress(format string, args ...any) {
	if isTerminal(os.Stderr) {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	}
}
