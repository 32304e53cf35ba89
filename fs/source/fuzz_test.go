package source

import (
	"errors"
	"testing"

	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/errdefs"
)

func FuzzFromLabels(f *testing.F) {
	l := validLabels()
	f.Add(l[LabelImageRef], l[LabelManifestDigest], l[LabelLayerDigest], l[LabelIndexDigest], l[LabelLayerSize], l[LabelImageLayers])
	f.Add("docker.io/library/x:1", l[LabelManifestDigest], l[LabelLayerDigest], "", "", "")
	f.Add("a/b@sha256:00", "sha256:", "", "x", "-0", ",")
	f.Fuzz(func(t *testing.T, ref, manifest, layer, index, size, layers string) {
		labels := map[string]string{
			LabelImageRef:       ref,
			LabelManifestDigest: manifest,
			LabelLayerDigest:    layer,
			LabelIndexDigest:    index,
			LabelLayerSize:      size,
			LabelImageLayers:    layers,
		}
		got, err := FromLabels(labels)
		if err != nil {
			if !errors.Is(err, errdefs.ErrNotFound) && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		checkTarget(t, got)
	})
}

// checkTarget asserts the invariants every accepted Target holds.
func checkTarget(t *testing.T, got Target) {
	t.Helper()
	spec, err := reference.Parse(got.ImageRef)
	if err != nil || spec.String() != got.ImageRef || spec.Hostname() == "" {
		t.Fatalf("ref %q not normalized: %v", got.ImageRef, err)
	}
	if got.ManifestDigest.Validate() != nil || got.LayerDigest.Validate() != nil {
		t.Fatalf("invalid digests in %+v", got)
	}
	if got.IndexDigest != "" && got.IndexDigest.Validate() != nil {
		t.Fatalf("invalid index digest %q", got.IndexDigest)
	}
	if got.LayerSize < 0 {
		t.Fatalf("negative size %d", got.LayerSize)
	}
	for _, d := range got.ImageLayers {
		if d.Validate() != nil {
			t.Fatalf("invalid image layer %q", d)
		}
	}
}
