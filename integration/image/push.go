package image

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Push uploads the image's layers and config, then its manifest, to ref
// (for example "127.0.0.1:5000/test/app:v1"). Loopback registries are spoken
// to over plain HTTP. Blobs the registry already has are not uploaded again.
func Push(ctx context.Context, ref string, img *Image) error {
	pusher, err := newPusher(ctx, ref)
	if err != nil {
		return err
	}
	for i, desc := range img.LayerDescs {
		if err := push(ctx, pusher, desc, img.Layers[i]); err != nil {
			return fmt.Errorf("push layer %d of %s: %w", i, ref, err)
		}
	}
	if err := push(ctx, pusher, img.Manifest.Config, img.ConfigBytes); err != nil {
		return fmt.Errorf("push config of %s: %w", ref, err)
	}
	if err := push(ctx, pusher, img.ManifestDesc, img.ManifestBytes); err != nil {
		return fmt.Errorf("push manifest of %s: %w", ref, err)
	}
	return nil
}

// PushBlob uploads one blob to the repository of ref.
func PushBlob(ctx context.Context, ref string, desc ocispec.Descriptor, data []byte) error {
	pusher, err := newPusher(ctx, ref)
	if err != nil {
		return err
	}
	if err := push(ctx, pusher, desc, data); err != nil {
		return fmt.Errorf("push blob %s to %s: %w", desc.Digest, ref, err)
	}
	return nil
}

// PushManifest uploads a manifest or index of the given media type. It is
// tagged when ref has a tag; without a tag (or with a digest other than its
// own) it is stored by digest only. The blobs and manifests it refers to must
// be pushed first.
func PushManifest(ctx context.Context, ref string, mediaType string, data []byte) (ocispec.Descriptor, error) {
	desc := ocispec.Descriptor{
		MediaType: mediaType,
		Digest:    digest.FromBytes(data),
		Size:      int64(len(data)),
	}
	pusher, err := newPusher(ctx, ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := push(ctx, pusher, desc, data); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("push manifest %s to %s: %w", desc.Digest, ref, err)
	}
	return desc, nil
}

// PushIndex builds an OCI image index listing manifests (already pushed, for
// example Image.ManifestDesc of each platform, plus any extra descriptors such
// as SOCI index manifests with their annotations) and uploads it to ref.
func PushIndex(ctx context.Context, ref string, manifests []ocispec.Descriptor, annotations map[string]string) (ocispec.Descriptor, error) {
	if manifests == nil {
		manifests = []ocispec.Descriptor{}
	}
	data, err := json.Marshal(ocispec.Index{
		Versioned:   specs.Versioned{SchemaVersion: 2},
		MediaType:   ocispec.MediaTypeImageIndex,
		Manifests:   manifests,
		Annotations: annotations,
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("encode image index for %s: %w", ref, err)
	}
	return PushManifest(ctx, ref, ocispec.MediaTypeImageIndex, data)
}

func newPusher(ctx context.Context, ref string) (remotes.Pusher, error) {
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost)),
	})
	pusher, err := resolver.Pusher(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("pusher for %s: %w", ref, err)
	}
	return pusher, nil
}

// push uploads data as desc unless the registry already has it.
func push(ctx context.Context, pusher remotes.Pusher, desc ocispec.Descriptor, data []byte) error {
	if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
		return fmt.Errorf("data does not match descriptor %s (%d bytes): %w", desc.Digest, desc.Size, errdefs.ErrInvalidArgument)
	}
	w, err := openWriter(ctx, pusher, desc)
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer w.Close()
	if len(data) == 0 {
		// The docker pusher only starts the upload on the first Write.
		if _, err := w.Write(nil); err != nil {
			return err
		}
	}
	return content.Copy(ctx, w, bytes.NewReader(data), desc.Size, desc.Digest)
}

// openWriter starts the upload of desc. It prefers the pusher's Ingester
// side, which takes our own tracking key: Push derives the key from the media
// type and warns about types it does not know, such as zTOC blobs.
func openWriter(ctx context.Context, pusher remotes.Pusher, desc ocispec.Descriptor) (content.Writer, error) {
	if ingester, ok := pusher.(content.Ingester); ok {
		return ingester.Writer(ctx, content.WithRef("push-"+desc.Digest.String()), content.WithDescriptor(desc))
	}
	return pusher.Push(ctx, desc)
}
