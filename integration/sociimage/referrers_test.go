package sociimage

import (
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestFallbackTag(t *testing.T) {
	d := digest.FromString("x")
	if got, want := FallbackTag(d), "sha256-"+d.Encoded(); got != want {
		t.Errorf("FallbackTag = %q, want %q", got, want)
	}
}

func TestReferrerDescriptorAndFallbackIndex(t *testing.T) {
	img := buildImage(t, testSpec())
	a, err := BuildIndex(img, 1, Options{SpanSize: testSpan})
	if err != nil {
		t.Fatal(err)
	}
	b, err := BuildIndex(img, 1, Options{SpanSize: 2 * testSpan})
	if err != nil {
		t.Fatal(err)
	}
	ra, rb := ReferrerDescriptor(a), ReferrerDescriptor(b)
	entry := func(x *Index) string {
		return fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%d,`+
			`"annotations":{"com.amazon.soci.build-tool-identifier":"AWS SOCI CLI v0.2"},`+
			`"artifactType":"application/vnd.amazon.soci.index.v1+json"}`, x.Desc.Digest, x.Desc.Size)
	}
	const head = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`

	one, err := FallbackIndex(nil, ra)
	if err != nil {
		t.Fatal(err)
	}
	if want := head + entry(a) + `]}`; string(one) != want {
		t.Errorf("first referrer:\n%s\nwant\n%s", one, want)
	}
	two, err := FallbackIndex(one, rb)
	if err != nil {
		t.Fatal(err)
	}
	if want := head + entry(a) + "," + entry(b) + `]}`; string(two) != want {
		t.Errorf("second referrer:\n%s\nwant\n%s", two, want)
	}
	again, err := FallbackIndex(two, ra, rb)
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(two) {
		t.Errorf("adding listed referrers changed the index:\n%s", again)
	}
	empty, err := FallbackIndex(nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := head + `]}`; string(empty) != want {
		t.Errorf("no referrers: %s", empty)
	}
	if _, err := FallbackIndex([]byte(`{"schemaVersion":2,"mediaType":"`+ocispec.MediaTypeImageManifest+`"}`), ra); err == nil {
		t.Error("a manifest was accepted as referrers index")
	}
}
