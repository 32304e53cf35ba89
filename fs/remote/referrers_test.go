package remote

import (
	"context"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	sociV1 = "application/vnd.amazon.soci.index.v1+json"
	other  = "application/vnd.example.sbom"
)

func referrersFixture(t *testing.T) (*fakeRegistry, digest.Digest, []ocispec.Descriptor) {
	reg := newFakeRegistry(t)
	subject, _ := testManifest(t, reg)
	descs := []ocispec.Descriptor{
		{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: other, Digest: digest.FromString("sbom"), Size: 10},
		{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: sociV1, Digest: digest.FromString("soci-a"), Size: 11},
		{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: sociV1, Digest: digest.FromString("soci-b"), Size: 12},
	}
	reg.set(func(r *fakeRegistry) { r.referrers[subject] = descs })
	return reg, subject, descs
}

func TestReferrersAPI(t *testing.T) {
	for _, serverSide := range []bool{true, false} {
		reg, subject, descs := referrersFixture(t)
		reg.set(func(r *fakeRegistry) { r.serverSide = serverSide })
		got, err := New(Options{}).Referrers(context.Background(), reg.ref("app"), subject, sociV1)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Digest != descs[1].Digest || got[1].Digest != descs[2].Digest {
			t.Fatalf("server-side filter %v: got %v", serverSide, got)
		}
		req := reg.requests[len(reg.requests)-1]
		if req.URL.Path != "/v2/app/referrers/"+subject.String() || req.URL.Query().Get("artifactType") != sociV1 {
			t.Fatalf("request %s", req.URL)
		}
	}
}

func TestReferrersFallbackTag(t *testing.T) {
	reg, subject, descs := referrersFixture(t)
	reg.set(func(r *fakeRegistry) { r.noAPI = true })
	tag := "sha256-" + subject.Encoded()
	reg.addManifest(tag, ocispec.MediaTypeImageIndex, mustJSON(indexOf(descs)))
	c := New(Options{})
	got, err := c.Referrers(context.Background(), reg.ref("app"), subject, sociV1)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Digest != descs[1].Digest {
		t.Fatalf("got %v", got)
	}
	if p := reg.requests[len(reg.requests)-1].URL.Path; p != "/v2/app/manifests/"+tag {
		t.Fatalf("fallback path %s", p)
	}
	all, err := c.Referrers(context.Background(), reg.ref("app"), subject, "")
	if err != nil || len(all) != 3 {
		t.Fatalf("all referrers: %v, %v", all, err)
	}
}

func TestReferrersNone(t *testing.T) {
	reg, subject, _ := referrersFixture(t)
	c := New(Options{})
	ctx := context.Background()
	_, err := c.Referrers(ctx, reg.ref("app"), subject, "application/vnd.amazon.soci.index.v2+json")
	if !errdefs.IsNotFound(err) {
		t.Fatalf("no referrer of the type: %v", err)
	}
	reg.set(func(r *fakeRegistry) { r.noAPI = true })
	_, err = c.Referrers(ctx, reg.ref("app"), subject, sociV1)
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "fallback tag") {
		t.Fatalf("no API and no fallback tag: %v", err)
	}
}
