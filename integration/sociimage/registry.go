package sociimage

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/integration/image"
)

// maxManifestSize bounds what fetchManifest reads (OCI's recommended limit).
const maxManifestSize = 4 << 20

// repository is the "host/path" part of an image reference.
type repository string

func repositoryOf(ref string) (repository, error) {
	spec, err := reference.Parse(ref)
	if err != nil {
		return "", fmt.Errorf("parse reference %q: %w", ref, err)
	}
	return repository(spec.Locator), nil
}

// at names the object with digest d in the repository.
func (r repository) at(d digest.Digest) string { return string(r) + "@" + d.String() }

// tagged names the tag in the repository.
func (r repository) tagged(tag string) string { return string(r) + ":" + tag }

// pushIndex uploads a SOCI index's zTOCs, its config blob and then its
// manifest, by digest only (no tag), to the repository of ref.
func pushIndex(ctx context.Context, ref string, idx *Index) error {
	repo, err := repositoryOf(ref)
	if err != nil {
		return err
	}
	for _, z := range idx.Manifest.Layers {
		if err := image.PushBlob(ctx, ref, z, idx.ZTOCs[z.Digest]); err != nil {
			return fmt.Errorf("push zTOC: %w", err)
		}
	}
	if err := image.PushBlob(ctx, ref, idx.ConfigDesc(), []byte(ConfigContent)); err != nil {
		return fmt.Errorf("push SOCI index config: %w", err)
	}
	if _, err := image.PushManifest(ctx, repo.at(idx.Desc.Digest), idx.Desc.MediaType, idx.Bytes); err != nil {
		return fmt.Errorf("push SOCI index: %w", err)
	}
	return nil
}

// pushBlobs uploads img's layers and config unless the registry has them.
func pushBlobs(ctx context.Context, ref string, img *image.Image) error {
	for i, desc := range img.LayerDescs {
		if err := image.PushBlob(ctx, ref, desc, img.Layers[i]); err != nil {
			return fmt.Errorf("push layer %d: %w", i, err)
		}
	}
	if err := image.PushBlob(ctx, ref, img.Manifest.Config, img.ConfigBytes); err != nil {
		return fmt.Errorf("push image config: %w", err)
	}
	return nil
}

// fetchManifest resolves ref and reads the manifest or index it names. A
// missing ref gives an error satisfying errdefs.IsNotFound.
func fetchManifest(ctx context.Context, ref string) (ocispec.Descriptor, []byte, error) {
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost)),
	})
	_, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("resolve %s: %w", ref, err)
	}
	if desc.Size > maxManifestSize {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s of %s is %d bytes, more than %d", desc.Digest, ref, desc.Size, maxManifestSize)
	}
	fetcher, err := resolver.Fetcher(ctx, ref)
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("fetcher for %s: %w", ref, err)
	}
	rc, err := fetcher.Fetch(ctx, desc)
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("fetch %s: %w", ref, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, desc.Size+1))
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("read %s: %w", ref, err)
	}
	if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest of %s does not match %s", ref, desc.Digest)
	}
	return desc, data, nil
}
