package remote

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func indexOf(descs []ocispec.Descriptor) ocispec.Index {
	if descs == nil {
		descs = []ocispec.Descriptor{}
	}
	return ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: descs}
}

func testManifest(t *testing.T, reg *fakeRegistry) (digest.Digest, []byte) {
	t.Helper()
	layer := reg.addBlob([]byte("layer"))
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    reg.addBlob([]byte("{}")),
		Layers:    []ocispec.Descriptor{layer},
	}
	b := mustJSON(m)
	return reg.addManifest("v1", ocispec.MediaTypeImageManifest, b), b
}

func TestFetchManifest(t *testing.T) {
	reg := newFakeRegistry(t)
	dgst, want := testManifest(t, reg)
	c := New(Options{})
	got, mt, err := c.FetchManifest(context.Background(), reg.ref("app"), dgst)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) || mt != ocispec.MediaTypeImageManifest {
		t.Fatalf("got %q (%s)", got, mt)
	}
	accept := reg.headers[len(reg.headers)-1].Get("Accept")
	for _, m := range []string{ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
		images.MediaTypeDockerSchema2Manifest, images.MediaTypeDockerSchema2ManifestList} {
		if !strings.Contains(accept, m) {
			t.Errorf("Accept %q lacks %s", accept, m)
		}
	}
	if p := reg.requests[len(reg.requests)-1].URL.Path; p != "/v2/app/manifests/"+dgst.String() {
		t.Errorf("path %s", p)
	}
}

func TestFetchManifestMediaTypeFromBody(t *testing.T) {
	reg := newFakeRegistry(t)
	body := mustJSON(indexOf(nil))
	dgst := reg.addManifest("", "", body)
	_, mt, err := New(Options{}).FetchManifest(context.Background(), "localhost:"+port(reg)+"/a/b", dgst)
	if err != nil {
		t.Fatal(err)
	}
	if mt != ocispec.MediaTypeImageIndex {
		t.Fatalf("media type %q", mt)
	}
}

func port(reg *fakeRegistry) string {
	_, p, _ := strings.Cut(reg.host(), ":")
	return p
}

func TestFetchManifestErrors(t *testing.T) {
	reg := newFakeRegistry(t)
	dgst, _ := testManifest(t, reg)
	c := New(Options{})
	ctx := context.Background()

	_, _, err := c.FetchManifest(ctx, reg.ref("app"), digest.FromString("absent"))
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "MANIFEST_UNKNOWN") || !strings.Contains(err.Error(), reg.host()) {
		t.Errorf("absent manifest: %v", err)
	}
	if _, _, err = c.FetchManifest(ctx, reg.ref("app"), "sha256:nothex"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad digest: %v", err)
	}
	if _, _, err = c.FetchManifest(ctx, "no-repo", dgst); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad ref: %v", err)
	}
	reg.set(func(r *fakeRegistry) { r.lie = true })
	if _, _, err = c.FetchManifest(ctx, reg.ref("app"), dgst); !errdefs.IsDataLoss(err) {
		t.Errorf("lying registry: %v", err)
	}
}

func TestFetchBlob(t *testing.T) {
	reg := newFakeRegistry(t)
	desc := reg.addBlob([]byte("ztoc bytes"))
	c := New(Options{})
	ctx := context.Background()
	got, err := c.FetchBlob(ctx, reg.ref("app"), desc)
	if err != nil || string(got) != "ztoc bytes" {
		t.Fatalf("got %q, %v", got, err)
	}

	short := desc
	short.Size--
	if _, err := c.FetchBlob(ctx, reg.ref("app"), short); !errdefs.IsDataLoss(err) {
		t.Errorf("size lie: %v", err)
	}
	huge := desc
	huge.Size = MaxBlobSize + 1
	if _, err := c.FetchBlob(ctx, reg.ref("app"), huge); !errdefs.IsInvalidArgument(err) {
		t.Errorf("huge blob: %v", err)
	}
	absent := ocispec.Descriptor{Digest: digest.FromString("x"), Size: 1}
	if _, err := c.FetchBlob(ctx, reg.ref("app"), absent); !errdefs.IsNotFound(err) {
		t.Errorf("absent blob: %v", err)
	}
	reg.set(func(r *fakeRegistry) { r.lie = true })
	_, err = c.FetchBlob(ctx, reg.ref("app"), desc)
	if !errdefs.IsDataLoss(err) || !strings.Contains(err.Error(), desc.Digest.String()) {
		t.Errorf("lying registry: %v", err)
	}
}

func TestRetriesTransientStatus(t *testing.T) {
	reg := newFakeRegistry(t)
	desc := reg.addBlob([]byte("abc"))
	reg.set(func(r *fakeRegistry) { r.failNext = DefaultRetry.attempts() - 1 })
	if _, err := New(Options{}).FetchBlob(context.Background(), reg.ref("app"), desc); err != nil {
		t.Fatalf("after %d 503s: %v", DefaultRetry.attempts()-1, err)
	}
	reg.set(func(r *fakeRegistry) { r.failNext = DefaultRetry.attempts() })
	_, err := New(Options{}).FetchBlob(context.Background(), reg.ref("app"), desc)
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("after %d 503s: %v", DefaultRetry.attempts(), err)
	}
	if got := reg.hitCount("blobs"); got != 2*DefaultRetry.attempts() {
		t.Fatalf("%d blob requests, want %d", got, 2*DefaultRetry.attempts())
	}
}

func TestBasicAuth(t *testing.T) {
	reg := newFakeRegistry(t)
	desc := reg.addBlob([]byte("secret layer"))
	reg.set(func(r *fakeRegistry) { r.user, r.pass = "alice", "pw" })
	ctx := context.Background()

	_, err := New(Options{}).FetchBlob(ctx, reg.ref("app"), desc)
	if !errdefs.IsUnauthorized(err) || !strings.Contains(err.Error(), "UNAUTHORIZED") {
		t.Fatalf("anonymous: %v", err)
	}
	var asked []string
	creds := func(host string) (string, string, error) {
		asked = append(asked, host)
		return "alice", "pw", nil
	}
	c := New(Options{Credentials: creds})
	for range 2 {
		if _, err := c.FetchBlob(ctx, reg.ref("app"), desc); err != nil {
			t.Fatal(err)
		}
	}
	if len(asked) != 1 || asked[0] != reg.host() {
		t.Fatalf("credentials asked for %v", asked)
	}
	// The first request is challenged, the retry and the second fetch are not.
	if got := reg.hitCount("blobs"); got != 1+3 {
		t.Fatalf("%d blob requests", got)
	}
	wrong := New(Options{Credentials: func(string) (string, string, error) { return "alice", "nope", nil }})
	if _, err = wrong.FetchBlob(ctx, reg.ref("app"), desc); !errdefs.IsUnauthorized(err) {
		t.Fatalf("wrong password: %v", err)
	}
	if strings.Contains(err.Error(), "pw") {
		t.Fatalf("error leaks the password: %v", err)
	}
}

func TestStatusErrorsAreClassified(t *testing.T) {
	for code, class := range map[int]error{
		404: errdefs.ErrNotFound, 401: errdefs.ErrUnauthenticated, 403: errdefs.ErrPermissionDenied,
		429: errdefs.ErrResourceExhausted, 502: errdefs.ErrUnavailable, 418: errdefs.ErrUnknown,
	} {
		err := error(&statusError{url: "http://r/v2/x", code: code})
		if !errors.Is(err, class) {
			t.Errorf("%d is not %v", code, class)
		}
	}
	if got := redact("https://u:p@s3.example/b?X-Amz-Signature=abc"); got != "https://s3.example/b" {
		t.Errorf("redact: %s", got)
	}
}

func TestBearerToken(t *testing.T) {
	reg := newFakeRegistry(t)
	desc := reg.addBlob([]byte("behind a token"))
	reg.set(func(r *fakeRegistry) { r.bearer = true })
	c := New(Options{})
	for range 2 {
		if got, err := c.FetchBlob(context.Background(), reg.ref("app"), desc); err != nil || string(got) != "behind a token" {
			t.Fatalf("got %q, %v", got, err)
		}
	}
	if reg.hitCount("other") != 1 || reg.hitCount("blobs") != 3 {
		t.Fatalf("%d token and %d blob requests", reg.hitCount("other"), reg.hitCount("blobs"))
	}
}
