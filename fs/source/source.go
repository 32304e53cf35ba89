package source

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Label names read from a layer's Prepare labels. The "cri." names are set by
// containerd for every remote-snapshot-aware client, the "remote/" names by
// nerdctl's SOCI handler.
const (
	// LabelImageRef is the image reference, e.g. "docker.io/library/x:1".
	LabelImageRef = "containerd.io/snapshot/cri.image-ref"
	// LabelManifestDigest is the digest of the image manifest of the layer.
	LabelManifestDigest = "containerd.io/snapshot/cri.manifest-digest"
	// LabelLayerDigest is the digest of the layer being prepared.
	LabelLayerDigest = "containerd.io/snapshot/cri.layer-digest"
	// LabelImageLayers lists, comma-separated, this layer's digest and the
	// ones following it (possibly truncated to fit the label size limit).
	LabelImageLayers = "containerd.io/snapshot/cri.image-layers"
	// LabelIndexDigest names an explicit SOCI index; nerdctl sets it empty
	// when the user gave none.
	LabelIndexDigest = "containerd.io/snapshot/remote/soci.index.digest"
	// LabelLayerSize is the compressed size of the layer, in decimal.
	LabelLayerSize = "containerd.io/snapshot/remote/soci.size"
	// LabelImageLayersSize lists, comma-separated, the sizes of the layers
	// named by LabelImageLayers.
	LabelImageLayersSize = "containerd.io/snapshot/remote/image.layers.size"
)

// Target is what one layer's labels say about where its content lives.
type Target struct {
	ImageRef       string          // normalized with containerd's pkg/reference; always has a host and a repository
	ManifestDigest digest.Digest   // the image manifest holding the layer
	LayerDigest    digest.Digest   // the layer itself
	LayerSize      int64           // 0 when unknown
	IndexDigest    digest.Digest   // explicit SOCI index; "" when not given
	ImageLayers    []digest.Digest // this layer and the following ones; nil when not given
}

// FromLabels builds a Target from a layer's Prepare labels. A missing
// required label (image ref, manifest digest, layer digest) gives an error
// wrapping errdefs.ErrNotFound; a malformed one, errdefs.ErrInvalidArgument.
// Optional labels that are present but malformed are errors too; an empty
// LabelIndexDigest or LabelLayerSize counts as absent.
func FromLabels(labels map[string]string) (Target, error) {
	var (
		t   Target
		err error
	)
	if t.ImageRef, err = imageRef(labels); err != nil {
		return Target{}, err
	}
	if t.ManifestDigest, err = requiredDigest(labels, LabelManifestDigest); err != nil {
		return Target{}, err
	}
	if t.LayerDigest, err = requiredDigest(labels, LabelLayerDigest); err != nil {
		return Target{}, err
	}
	if t.IndexDigest, err = optionalDigest(labels, LabelIndexDigest); err != nil {
		return Target{}, err
	}
	if t.LayerSize, err = layerSize(labels); err != nil {
		return Target{}, err
	}
	if t.ImageLayers, err = imageLayers(labels); err != nil {
		return Target{}, err
	}
	return t, nil
}

func imageRef(labels map[string]string) (string, error) {
	v, ok := labels[LabelImageRef]
	if !ok || v == "" {
		return "", missing(LabelImageRef)
	}
	spec, err := reference.Parse(v)
	if err != nil {
		return "", malformed(LabelImageRef, v, err.Error())
	}
	if !strings.Contains(spec.Locator, "/") {
		return "", malformed(LabelImageRef, v, "no repository after the host")
	}
	// reference.Parse checks the host only as part of a URL it builds, which
	// lets through what its own output can't be parsed from again (a host
	// of " ", say): the normalized form must parse to itself.
	if again, err := reference.Parse(spec.String()); err != nil || again.String() != spec.String() {
		return "", malformed(LabelImageRef, v, "host or repository does not survive normalization")
	}
	return spec.String(), nil
}

func requiredDigest(labels map[string]string, name string) (digest.Digest, error) {
	v, ok := labels[name]
	if !ok || v == "" {
		return "", missing(name)
	}
	return parseDigest(name, v)
}

func optionalDigest(labels map[string]string, name string) (digest.Digest, error) {
	v := labels[name]
	if v == "" {
		return "", nil
	}
	return parseDigest(name, v)
}

func parseDigest(name, v string) (digest.Digest, error) {
	d, err := digest.Parse(v)
	if err != nil {
		return "", malformed(name, v, err.Error())
	}
	return d, nil
}

func layerSize(labels map[string]string) (int64, error) {
	v := labels[LabelLayerSize]
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, malformed(LabelLayerSize, v, "not a non-negative decimal integer")
	}
	return n, nil
}

func imageLayers(labels map[string]string) ([]digest.Digest, error) {
	v := labels[LabelImageLayers]
	if v == "" {
		return nil, nil
	}
	parts := strings.Split(v, ",")
	out := make([]digest.Digest, 0, len(parts))
	for _, p := range parts {
		d, err := digest.Parse(strings.TrimSpace(p))
		if err != nil {
			return nil, malformed(LabelImageLayers, v, err.Error())
		}
		out = append(out, d)
	}
	return out, nil
}

func missing(name string) error {
	return fmt.Errorf("label %s: %w", name, errdefs.ErrNotFound)
}

// maxQuoted bounds how much of a malformed value is echoed into an error.
const maxQuoted = 128

func malformed(name, value, why string) error {
	if len(value) > maxQuoted {
		value = value[:maxQuoted] + "..."
	}
	return fmt.Errorf("label %s=%q: %s: %w", name, value, why, errdefs.ErrInvalidArgument)
}
