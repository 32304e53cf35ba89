package main

import (
	"context"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func imagePlatforms(ctx context.Context, s *session, img images.Image) ([]ocispec.Platform, error) {
	ps, err := images.Platforms(ctx, s.client.ContentStore(), img.Target)
	if err != nil {
		return nil, err
	}
	return dedupe(ps), nil
}

func isNotFound(err error) bool { return errdefs.IsNotFound(err) }

func orNotFound(err error) error {
	if err == nil {
		return errdefs.ErrNotFound
	}
	return err
}
