package hostile

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/pkg/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// ManifestPlacer uploads SOCI index manifests that the registry's manifest
// PUT refuses. The distribution registry checks the descriptors of a
// manifest it takes (a layer digest must parse and name a blob it has), so
// an index with a path-traversal or colon-less digest can't be PUT. Its
// storage has no such check on the way out: the manifest bytes are
// uploaded as an ordinary blob, then linked as a manifest revision of the
// repository in the registry's filesystem storage, exactly where a
// successful PUT would have linked it. The registry then serves them on
// GET /v2/<repo>/manifests/<digest> like any other manifest.
type ManifestPlacer struct {
	// Storage is the registry's filesystem storage root.
	Storage string
	// Refused records the registry's answer to the plain PUT tried first.
	Refused string
}

// Push is a sociimage.IndexPusher: a plain PUT, and when the registry
// refuses it, the blob-and-link way described above.
func (p *ManifestPlacer) Push(ctx context.Context, ref string, idx *sociimage.Index) error {
	spec, err := reference.Parse(ref)
	if err != nil {
		return fmt.Errorf("parse reference %q: %w", ref, err)
	}
	host, repo := spec.Hostname(), strings.TrimPrefix(spec.Locator, spec.Hostname()+"/")
	status, body, err := putManifest(ctx, host, repo, idx)
	if err != nil {
		return err
	}
	if status == http.StatusCreated {
		p.Refused = ""
		return nil
	}
	p.Refused = fmt.Sprintf("%d %s", status, strings.TrimSpace(body))
	blob := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: idx.Desc.Digest, Size: idx.Desc.Size}
	if err := image.PushBlob(ctx, ref, blob, idx.Bytes); err != nil {
		return fmt.Errorf("upload index manifest %s as a blob: %w", idx.Desc.Digest, err)
	}
	link := filepath.Join(p.Storage, "docker/registry/v2/repositories", repo, "_manifests/revisions",
		string(idx.Desc.Digest.Algorithm()), idx.Desc.Digest.Encoded(), "link")
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return fmt.Errorf("link index manifest %s: %w", idx.Desc.Digest, err)
	}
	if err := os.WriteFile(link, []byte(idx.Desc.Digest.String()), 0o644); err != nil {
		return fmt.Errorf("link index manifest %s: %w", idx.Desc.Digest, err)
	}
	return nil
}

// putManifest PUTs idx's bytes by digest and returns the registry's status
// and body.
func putManifest(ctx context.Context, host, repo string, idx *sociimage.Index) (int, string, error) {
	url := fmt.Sprintf("http://%s/v2/%s/manifests/%s", host, repo, idx.Desc.Digest)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, bytes.NewReader(idx.Bytes))
	if err != nil {
		return 0, "", fmt.Errorf("PUT %s: %w", url, err)
	}
	req.Header.Set("Content-Type", idx.Desc.MediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("PUT %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(body), nil
}
