package sociimage

import (
	"github.com/fastsoci/soci-snapshotter/integration/registrytest"

	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote"
)

// startRegistry serves a fake registry on loopback and returns it with its
// "127.0.0.1:port" host.
func startRegistry(t *testing.T) (*registrytest.Registry, string) {
	t.Helper()
	reg := registrytest.New()
	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)
	return reg, strings.TrimPrefix(srv.URL, "http://")
}

// orasRepository opens repo the way the reference daemon reads registries.
func orasRepository(t *testing.T, host, repo string) *remote.Repository {
	t.Helper()
	r, err := remote.NewRepository(host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	r.PlainHTTP = true
	return r
}

func TestPushV2(t *testing.T) {
	ctx := context.Background()
	reg, host := startRegistry(t)
	img := buildImage(t, testSpec())
	manifest, idx, err := PushV2(ctx, host+"/test/app:soci", img, Options{SpanSize: testSpan, SkipLayers: []int{1}})
	if err != nil {
		t.Fatal(err)
	}

	tagged, ok := reg.Get("test/app:soci")
	wantIndex, _, err := V2ImageIndex(manifest, idx.Desc)
	if err != nil {
		t.Fatal(err)
	}
	if !ok || tagged.MediaType != ocispec.MediaTypeImageIndex || !bytes.Equal(tagged.Data, wantIndex) {
		t.Fatalf("tag holds %q:\n%s\nwant\n%s", tagged.MediaType, tagged.Data, wantIndex)
	}
	if _, ok := reg.Get("test/app@" + img.ManifestDesc.Digest.String()); ok {
		t.Error("the original manifest was pushed")
	}

	// Discover the index as the reference daemon does: the manifest's
	// annotation, then the index by digest, re-encoded and checked.
	repo := orasRepository(t, host, "test/app")
	_, rc, err := repo.Manifests().FetchReference(ctx, manifest.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	err = json.NewDecoder(rc).Decode(&m)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	indexDigest := digest.Digest(m.Annotations[soci.ImageAnnotationSociIndexDigest])
	if indexDigest != idx.Desc.Digest {
		t.Fatalf("manifest names index %q, want %s", indexDigest, idx.Desc.Digest)
	}
	checkPushedIndex(t, repo, idx)
}

func TestPushV1TwiceListsBothIndices(t *testing.T) {
	ctx := context.Background()
	reg, host := startRegistry(t)
	img := buildImage(t, testSpec())
	ref := host + "/test/app:v1"
	first, err := PushV1(ctx, ref, img, Options{SpanSize: testSpan})
	if err != nil {
		t.Fatal(err)
	}
	second, err := PushV1(ctx, ref, img, Options{SpanSize: 2 * testSpan, SkipLayers: []int{0}})
	if err != nil {
		t.Fatal(err)
	}
	if first.Desc.Digest == second.Desc.Digest {
		t.Fatal("both pushes built the same index")
	}
	if m, ok := reg.Get("test/app:v1"); !ok || !bytes.Equal(m.Data, img.ManifestBytes) {
		t.Errorf("image tag does not hold the image's manifest")
	}
	fallback, ok := reg.Get("test/app:" + FallbackTag(img.ManifestDesc.Digest))
	want, err := FallbackIndex(nil, ReferrerDescriptor(first), ReferrerDescriptor(second))
	if err != nil {
		t.Fatal(err)
	}
	if !ok || fallback.MediaType != ocispec.MediaTypeImageIndex || !bytes.Equal(fallback.Data, want) {
		t.Fatalf("fallback tag holds %q:\n%s\nwant\n%s", fallback.MediaType, fallback.Data, want)
	}

	// Discover as the reference daemon does: oras tries the referrers API,
	// gets 404 and reads the fallback tag, filtered by artifact type.
	repo := orasRepository(t, host, "test/app")
	var found []ocispec.Descriptor
	err = repo.Referrers(ctx, ocispec.Descriptor{Digest: img.ManifestDesc.Digest}, soci.SociIndexArtifactType,
		func(refs []ocispec.Descriptor) error {
			found = append(found, refs...)
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if got := digests(found); !slices.Equal(got, []digest.Digest{first.Desc.Digest, second.Desc.Digest}) {
		t.Fatalf("referrers %v", got)
	}
	if !slices.Contains(reg.Requests(), "GET /v2/test/app/referrers/"+img.ManifestDesc.Digest.String()) {
		t.Errorf("oras did not try the referrers API first: %v", reg.Requests())
	}
	checkPushedIndex(t, repo, first)
	checkPushedIndex(t, repo, second)
}

// checkPushedIndex fetches idx and its blobs from the registry and checks
// them the way the reference daemon does.
func checkPushedIndex(t *testing.T, repo *remote.Repository, idx *Index) {
	t.Helper()
	ctx := context.Background()
	desc, rc, err := repo.Manifests().FetchReference(ctx, idx.Desc.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if desc.MediaType != ocispec.MediaTypeImageManifest || !bytes.Equal(data, idx.Bytes) {
		t.Fatalf("index %s served as %q:\n%s", idx.Desc.Digest, desc.MediaType, data)
	}
	var decoded soci.Index
	if err := soci.UnmarshalIndex(data, &decoded); err != nil {
		t.Fatal(err)
	}
	if again, err := soci.MarshalIndex(&decoded); err != nil || !bytes.Equal(again, data) {
		t.Errorf("re-encoded index differs (%v):\n%s", err, again)
	}
	blobs := append([]ocispec.Descriptor{decoded.Config}, decoded.Blobs...)
	for _, b := range blobs {
		content, err := fetchBlob(ctx, repo, b)
		if err != nil {
			t.Fatalf("blob %s: %v", b.Digest, err)
		}
		if b.Digest == decoded.Config.Digest {
			if string(content) != "{}" {
				t.Errorf("config blob %q", content)
			}
			continue
		}
		if _, err := ztoc.Unmarshal(bytes.NewReader(content)); err != nil {
			t.Errorf("zTOC %s: %v", b.Digest, err)
		}
	}
}

func fetchBlob(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor) ([]byte, error) {
	rc, err := repo.Blobs().Fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func digests(descs []ocispec.Descriptor) []digest.Digest {
	var out []digest.Digest
	for _, d := range descs {
		out = append(out, d.Digest)
	}
	return out
}
