// Package image builds OCI images for tests and benchmarks, deterministically
// and in memory, and pushes them to a registry over plain HTTP. It is not part
// of the snapshotter's flow: it produces the images whose layers the flow
// later prepares, mounts and reads.
package image

import (
	"encoding/json"
	"fmt"
	"runtime"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Spec describes an image to build.
type Spec struct {
	Layers     []Layer
	Entrypoint []string
	Cmd        []string
	Env        []string
	// Platform defaults to linux/runtime.GOARCH when OS and Architecture are empty.
	Platform ocispec.Platform
	// Annotations are set on the image manifest.
	Annotations map[string]string
}

// Image is a built image: every blob and its descriptor, ready to push.
type Image struct {
	Manifest      ocispec.Manifest
	ManifestBytes []byte
	// ManifestDesc describes ManifestBytes; its Platform is set so that it can
	// be listed in an image index as is.
	ManifestDesc ocispec.Descriptor
	Config       ocispec.Image
	ConfigBytes  []byte
	Layers       [][]byte // layer blobs, in order
	LayerDescs   []ocispec.Descriptor
}

// Build builds the image described by spec. The same spec always gives the
// same bytes and so the same digests.
func Build(spec Spec) (*Image, error) {
	platform := spec.Platform
	if platform.OS == "" && platform.Architecture == "" {
		platform.OS, platform.Architecture = "linux", runtime.GOARCH
	}
	img := &Image{
		Config: ocispec.Image{
			Platform: platform,
			Config: ocispec.ImageConfig{
				Entrypoint: spec.Entrypoint,
				Cmd:        spec.Cmd,
				Env:        spec.Env,
			},
			RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{}},
		},
	}
	for i, l := range spec.Layers {
		built, err := l.build()
		if err != nil {
			return nil, fmt.Errorf("build layer %d: %w", i, err)
		}
		img.Layers = append(img.Layers, built.blob)
		img.LayerDescs = append(img.LayerDescs, built.desc)
		img.Config.RootFS.DiffIDs = append(img.Config.RootFS.DiffIDs, built.diffID)
		img.Config.History = append(img.Config.History, ocispec.History{
			CreatedBy: fmt.Sprintf("image.Build layer %d", i),
		})
	}

	var err error
	if img.ConfigBytes, err = json.Marshal(img.Config); err != nil {
		return nil, fmt.Errorf("encode image config: %w", err)
	}
	layers := img.LayerDescs
	if layers == nil {
		layers = []ocispec.Descriptor{}
	}
	img.Manifest = ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{
			MediaType: ocispec.MediaTypeImageConfig,
			Digest:    digest.FromBytes(img.ConfigBytes),
			Size:      int64(len(img.ConfigBytes)),
		},
		Layers:      layers,
		Annotations: spec.Annotations,
	}
	if img.ManifestBytes, err = json.Marshal(img.Manifest); err != nil {
		return nil, fmt.Errorf("encode image manifest: %w", err)
	}
	img.ManifestDesc = ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest,
		Digest:    digest.FromBytes(img.ManifestBytes),
		Size:      int64(len(img.ManifestBytes)),
		Platform:  &platform,
	}
	return img, nil
}
