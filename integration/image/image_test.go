package image

import (
	"github.com/fastsoci/soci-snapshotter/integration/registrytest"

	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var mtime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func testSpec() Spec {
	return Spec{
		Layers: []Layer{
			{Entries: []Entry{
				Dir("etc"),
				File("etc/config", []byte("hello\n")),
				{Name: "bin", Type: tar.TypeDir, Mode: 0o755, ModTime: mtime},
				{Name: "bin/tool", Type: tar.TypeReg, Mode: 0o4755, UID: 1000, GID: 1001, Uname: "u", Gname: "g",
					ModTime: mtime, Size: 100000, Seed: 7,
					Xattrs: map[string]string{"user.a": "1", "security.capability": "\x01\x00"}},
				Symlink("bin/link", "tool"),
				Hardlink("bin/hard", "bin/tool"),
				{Name: "dev0", Type: tar.TypeChar, Mode: 0o600, Devmajor: 1, Devminor: 3},
				{Name: "fifo", Type: tar.TypeFifo, Mode: 0o644},
				Dir("data"),
				File("data/old", []byte("old")),
			}},
			{Entries: []Entry{
				Whiteout("etc/config"),
				OpaqueDir("data"),
				File("data/new", nil),
			}},
			{Uncompressed: true, Entries: []Entry{RandomFile("big", 1<<20, 1)}},
		},
		Entrypoint: []string{"/probe"},
		Cmd:        []string{"ready"},
		Env:        []string{"A=b"},
	}
}

func TestBuildIsDeterministic(t *testing.T) {
	a, err := Build(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	if a.ManifestDesc.Digest != b.ManifestDesc.Digest || !bytes.Equal(a.ManifestBytes, b.ManifestBytes) {
		t.Fatalf("manifest digests differ: %s, %s", a.ManifestDesc.Digest, b.ManifestDesc.Digest)
	}
	for i := range a.Layers {
		if a.LayerDescs[i].Digest != b.LayerDescs[i].Digest {
			t.Errorf("layer %d digests differ", i)
		}
	}
	spec := testSpec()
	spec.Layers[0].Entries[3].Seed = 8
	c, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	if c.LayerDescs[0].Digest == a.LayerDescs[0].Digest {
		t.Error("another seed gave the same layer")
	}
}

// readLayer returns the uncompressed tar stream of layer i.
func readLayer(t *testing.T, img *Image, i int) []byte {
	t.Helper()
	blob := img.Layers[i]
	if img.LayerDescs[i].MediaType == ocispec.MediaTypeImageLayer {
		return blob
	}
	zr, err := gzip.NewReader(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() || zr.Name != "" {
		t.Errorf("gzip header of layer %d has time %v name %q", i, zr.ModTime, zr.Name)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func readEntries(t *testing.T, data []byte) (map[string]*tar.Header, map[string][]byte, []string) {
	t.Helper()
	hdrs, contents := map[string]*tar.Header{}, map[string][]byte{}
	var names []string
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hdrs, contents, names
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hdrs[hdr.Name], contents[hdr.Name] = hdr, b
		names = append(names, hdr.Name)
	}
}

func TestBuildLayers(t *testing.T) {
	img, err := Build(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	wantTypes := []string{ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayer}
	for i, desc := range img.LayerDescs {
		if desc.MediaType != wantTypes[i] || desc.Digest != digest.FromBytes(img.Layers[i]) || desc.Size != int64(len(img.Layers[i])) {
			t.Errorf("layer %d descriptor %+v does not match its blob", i, desc)
		}
		if got, want := img.Config.RootFS.DiffIDs[i], digest.FromBytes(readLayer(t, img, i)); got != want {
			t.Errorf("diff ID %d = %s, want %s", i, got, want)
		}
	}

	hdrs, contents, names := readEntries(t, readLayer(t, img, 0))
	wantNames := "etc/ etc/config bin/ bin/tool bin/link bin/hard dev0 fifo data/ data/old"
	if got := strings.Join(names, " "); got != wantNames {
		t.Errorf("layer 0 entries %q, want %q", got, wantNames)
	}
	tool := hdrs["bin/tool"]
	if tool.Mode != 0o4755 || tool.Uid != 1000 || tool.Gid != 1001 || tool.Uname != "u" || !tool.ModTime.Equal(mtime) {
		t.Errorf("bin/tool header %+v", tool)
	}
	if tool.PAXRecords["SCHILY.xattr.user.a"] != "1" || tool.PAXRecords["SCHILY.xattr.security.capability"] != "\x01\x00" {
		t.Errorf("bin/tool PAX records %v", tool.PAXRecords)
	}
	want, _ := io.ReadAll(io.LimitReader(seededReader(7), 100000))
	if !bytes.Equal(contents["bin/tool"], want) || len(want) != 100000 {
		t.Error("bin/tool content is not the seeded content")
	}
	if string(contents["etc/config"]) != "hello\n" {
		t.Errorf("etc/config content %q", contents["etc/config"])
	}
	if h := hdrs["bin/link"]; h.Typeflag != tar.TypeSymlink || h.Linkname != "tool" {
		t.Errorf("bin/link header %+v", h)
	}
	if h := hdrs["bin/hard"]; h.Typeflag != tar.TypeLink || h.Linkname != "bin/tool" {
		t.Errorf("bin/hard header %+v", h)
	}
	if h := hdrs["dev0"]; h.Typeflag != tar.TypeChar || h.Devmajor != 1 || h.Devminor != 3 {
		t.Errorf("dev0 header %+v", h)
	}
	if h := hdrs["etc/"]; h.ModTime.Unix() != 0 || h.Mode != 0o755 {
		t.Errorf("etc/ header %+v", h)
	}

	_, _, names = readEntries(t, readLayer(t, img, 1))
	if got, want := strings.Join(names, " "), "etc/.wh.config data/.wh..wh..opq data/new"; got != want {
		t.Errorf("layer 1 entries %q, want %q", got, want)
	}
	_, contents, _ = readEntries(t, readLayer(t, img, 2))
	if len(contents["big"]) != 1<<20 {
		t.Errorf("big has %d bytes", len(contents["big"]))
	}
}

func TestBuildConfigAndManifest(t *testing.T) {
	img, err := Build(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(img.ConfigBytes, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture == "" || len(cfg.RootFS.DiffIDs) != 3 || len(cfg.History) != 3 ||
		cfg.Config.Entrypoint[0] != "/probe" || cfg.Config.Cmd[0] != "ready" || cfg.Config.Env[0] != "A=b" {
		t.Errorf("config %s", img.ConfigBytes)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(img.ManifestBytes, &m); err != nil {
		t.Fatal(err)
	}
	if m.MediaType != ocispec.MediaTypeImageManifest || m.Config.Digest != digest.FromBytes(img.ConfigBytes) || len(m.Layers) != 3 {
		t.Errorf("manifest %s", img.ManifestBytes)
	}
	if img.ManifestDesc.Digest != digest.FromBytes(img.ManifestBytes) || img.ManifestDesc.Platform == nil {
		t.Errorf("manifest descriptor %+v", img.ManifestDesc)
	}
}

// fetch reads desc (a blob or manifest) from the repository of ref and checks its digest.
func fetch(t *testing.T, ref string, desc ocispec.Descriptor) []byte {
	t.Helper()
	ctx := context.Background()
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost)),
	})
	fetcher, err := resolver.Fetcher(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := fetcher.Fetch(ctx, desc)
	if err != nil {
		t.Fatalf("fetch %s: %v", desc.Digest, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if digest.FromBytes(data) != desc.Digest {
		t.Fatalf("fetched %s has digest %s", desc.Digest, digest.FromBytes(data))
	}
	return data
}

func resolve(t *testing.T, ref string) ocispec.Descriptor {
	t.Helper()
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost)),
	})
	_, desc, err := resolver.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatalf("resolve %s: %v", ref, err)
	}
	return desc
}

func TestPush(t *testing.T) {
	srv := httptest.NewServer(registrytest.New())
	defer srv.Close()
	ctx := context.Background()
	repo := strings.TrimPrefix(srv.URL, "http://") + "/test/app"

	img, err := Build(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second push finds everything present
		if err := Push(ctx, repo+":v1", img); err != nil {
			t.Fatal(err)
		}
	}
	desc := resolve(t, repo+":v1")
	if desc.Digest != img.ManifestDesc.Digest || desc.MediaType != ocispec.MediaTypeImageManifest {
		t.Fatalf("resolved %+v, want %s", desc, img.ManifestDesc.Digest)
	}
	if !bytes.Equal(fetch(t, repo+":v1", desc), img.ManifestBytes) {
		t.Error("fetched manifest differs")
	}
	fetch(t, repo, img.Manifest.Config)
	for _, l := range img.LayerDescs {
		fetch(t, repo, l)
	}

	layer := Layer{Entries: []Entry{File("same", []byte("same"))}}
	dup, err := Build(Spec{Layers: []Layer{layer, layer}})
	if err != nil {
		t.Fatal(err)
	}
	if err := Push(ctx, repo+":dup", dup); err != nil {
		t.Fatalf("push image with a repeated layer: %v", err)
	}

	empty := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(nil)}
	if err := PushBlob(ctx, repo, empty, nil); err != nil {
		t.Fatalf("push empty blob: %v", err)
	}
	fetch(t, repo, empty)
	if err := PushBlob(ctx, repo, empty, []byte("x")); err == nil {
		t.Error("pushing data that does not match its descriptor succeeded")
	}
}

func TestPushIndex(t *testing.T) {
	srv := httptest.NewServer(registrytest.New())
	defer srv.Close()
	ctx := context.Background()
	repo := strings.TrimPrefix(srv.URL, "http://") + "/test/multi"

	var manifests []ocispec.Descriptor
	for _, arch := range []string{"amd64", "arm64"} {
		spec := testSpec()
		spec.Platform = ocispec.Platform{OS: "linux", Architecture: arch}
		img, err := Build(spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := Push(ctx, repo+"@"+img.ManifestDesc.Digest.String(), img); err != nil {
			t.Fatal(err)
		}
		manifests = append(manifests, img.ManifestDesc)
	}
	extra, err := PushManifest(ctx, repo, ocispec.MediaTypeImageManifest, []byte(`{"schemaVersion":2}`))
	if err != nil {
		t.Fatal(err)
	}
	extra.ArtifactType = "application/vnd.example+json"
	extra.Annotations = map[string]string{"k": "v"}
	manifests = append(manifests, extra)

	idxDesc, err := PushIndex(ctx, repo+":latest", manifests, nil)
	if err != nil {
		t.Fatal(err)
	}
	desc := resolve(t, repo+":latest")
	if desc.Digest != idxDesc.Digest || desc.MediaType != ocispec.MediaTypeImageIndex {
		t.Fatalf("resolved %+v, want %+v", desc, idxDesc)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(fetch(t, repo+":latest", desc), &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 3 || idx.Manifests[1].Platform.Architecture != "arm64" || idx.Manifests[2].Annotations["k"] != "v" {
		t.Errorf("index %+v", idx)
	}
	for _, m := range idx.Manifests {
		fetch(t, repo, m)
	}
}
