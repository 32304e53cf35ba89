package source

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

var (
	manifestDgst = digest.FromString("manifest")
	layerDgst    = digest.FromString("layer")
	nextDgst     = digest.FromString("next")
	indexDgst    = digest.FromString("index")
)

func validLabels() map[string]string {
	return map[string]string{
		LabelImageRef:                "127.0.0.1:5000/app:v1",
		LabelManifestDigest:          manifestDgst.String(),
		LabelLayerDigest:             layerDgst.String(),
		LabelImageLayers:             layerDgst.String() + "," + nextDgst.String(),
		LabelIndexDigest:             indexDgst.String(),
		LabelLayerSize:               "12345",
		LabelImageLayersSize:         "12345,678",
		"containerd.io/snapshot.ref": "key",
	}
}

func TestFromLabelsComplete(t *testing.T) {
	got, err := FromLabels(validLabels())
	if err != nil {
		t.Fatal(err)
	}
	if got.ImageRef != "127.0.0.1:5000/app:v1" || got.ManifestDigest != manifestDgst ||
		got.LayerDigest != layerDgst || got.IndexDigest != indexDgst || got.LayerSize != 12345 {
		t.Fatalf("unexpected target %+v", got)
	}
	if len(got.ImageLayers) != 2 || got.ImageLayers[0] != layerDgst || got.ImageLayers[1] != nextDgst {
		t.Fatalf("image layers = %v", got.ImageLayers)
	}
}

func TestFromLabelsOptionalAbsentOrEmpty(t *testing.T) {
	l := validLabels()
	l[LabelIndexDigest] = "" // nerdctl sets it empty when unset
	delete(l, LabelLayerSize)
	delete(l, LabelImageLayers)
	l[LabelImageRef] = "docker.io/library/x:1"
	got, err := FromLabels(l)
	if err != nil {
		t.Fatal(err)
	}
	if got.IndexDigest != "" || got.LayerSize != 0 || got.ImageLayers != nil {
		t.Fatalf("unexpected optional fields %+v", got)
	}
	if got.ImageRef != "docker.io/library/x:1" {
		t.Fatalf("ref = %q", got.ImageRef)
	}
}

func TestFromLabelsNormalizesRef(t *testing.T) {
	l := validLabels()
	l[LabelImageRef] = "registry.example.com/a//b/../c:tag"
	got, err := FromLabels(l)
	if err != nil {
		t.Fatal(err)
	}
	if got.ImageRef != "registry.example.com/a/c:tag" {
		t.Fatalf("ref = %q", got.ImageRef)
	}
}

func TestFromLabelsErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(map[string]string)
		class error
		label string
	}{
		{"nil labels", func(l map[string]string) { clear(l) }, errdefs.ErrNotFound, LabelImageRef},
		{"no ref", func(l map[string]string) { delete(l, LabelImageRef) }, errdefs.ErrNotFound, LabelImageRef},
		{"empty ref", func(l map[string]string) { l[LabelImageRef] = "" }, errdefs.ErrNotFound, LabelImageRef},
		{"ref without host", func(l map[string]string) { l[LabelImageRef] = "ubuntu" }, errdefs.ErrInvalidArgument, LabelImageRef},
		{"ref with bad port", func(l map[string]string) { l[LabelImageRef] = "ubuntu:22.04" }, errdefs.ErrInvalidArgument, LabelImageRef},
		{"ref with scheme", func(l map[string]string) { l[LabelImageRef] = "https://r.io/a:1" }, errdefs.ErrInvalidArgument, LabelImageRef},
		{"ref normalizing to a blank host", func(l map[string]string) { l[LabelImageRef] = "./ /0" }, errdefs.ErrInvalidArgument, LabelImageRef},
		{"no manifest", func(l map[string]string) { delete(l, LabelManifestDigest) }, errdefs.ErrNotFound, LabelManifestDigest},
		{"bad manifest", func(l map[string]string) { l[LabelManifestDigest] = "sha256:xyz" }, errdefs.ErrInvalidArgument, LabelManifestDigest},
		{"no layer", func(l map[string]string) { delete(l, LabelLayerDigest) }, errdefs.ErrNotFound, LabelLayerDigest},
		{"bad layer", func(l map[string]string) { l[LabelLayerDigest] = "md5:00" }, errdefs.ErrInvalidArgument, LabelLayerDigest},
		{"bad index", func(l map[string]string) { l[LabelIndexDigest] = "nope" }, errdefs.ErrInvalidArgument, LabelIndexDigest},
		{"bad size", func(l map[string]string) { l[LabelLayerSize] = "12k" }, errdefs.ErrInvalidArgument, LabelLayerSize},
		{"negative size", func(l map[string]string) { l[LabelLayerSize] = "-1" }, errdefs.ErrInvalidArgument, LabelLayerSize},
		{"bad layers", func(l map[string]string) { l[LabelImageLayers] += ",," }, errdefs.ErrInvalidArgument, LabelImageLayers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := validLabels()
			tc.edit(l)
			_, err := FromLabels(l)
			if !errors.Is(err, tc.class) {
				t.Fatalf("error %v is not %v", err, tc.class)
			}
			if !strings.Contains(err.Error(), tc.label) {
				t.Fatalf("error %q does not name label %s", err, tc.label)
			}
		})
	}
	if _, err := FromLabels(nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("nil map: %v", err)
	}
}

func TestFromLabelsBoundsQuotedValue(t *testing.T) {
	l := validLabels()
	l[LabelLayerDigest] = strings.Repeat("x", 10000)
	_, err := FromLabels(l)
	if err == nil || len(err.Error()) > 1000 {
		t.Fatalf("error too long or missing: %d", len(err.Error()))
	}
}
