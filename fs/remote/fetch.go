package remote

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	// MaxManifestSize bounds manifests and referrers indexes read from a
	// registry.
	MaxManifestSize = 4 << 20
	// MaxBlobSize bounds blobs read whole by FetchBlob.
	MaxBlobSize = 256 << 20
)

// manifestAccept is the Accept header of manifest requests.
var manifestAccept = strings.Join([]string{
	ocispec.MediaTypeImageManifest,
	ocispec.MediaTypeImageIndex,
	images.MediaTypeDockerSchema2Manifest,
	images.MediaTypeDockerSchema2ManifestList,
}, ", ")

// FetchManifest fetches the manifest or index dgst of ref's repository,
// verifies its digest and returns it with its media type (from the response,
// or from the document's mediaType field when the registry gives none).
func (c *Client) FetchManifest(ctx context.Context, ref string, dgst digest.Digest) ([]byte, string, error) {
	start := time.Now()
	b, mediaType, err := c.fetchManifest(ctx, ref, dgst)
	c.observe(KindManifest, start, int64(len(b)))
	if err != nil {
		return nil, "", fmt.Errorf("fetch manifest %s of %s: %w", dgst, ref, err)
	}
	return b, mediaType, nil
}

func (c *Client) fetchManifest(ctx context.Context, ref string, dgst digest.Digest) ([]byte, string, error) {
	if err := dgst.Validate(); err != nil {
		return nil, "", fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	repo, err := parseRef(ref)
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	header := http.Header{"Accept": {manifestAccept}}
	resp, _, err := c.get(ctx, repo, docker.HostCapabilityPull, "manifests/"+dgst.String(), nil, header)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := readAtMost(resp.Body, MaxManifestSize)
	if err != nil {
		return nil, "", err
	}
	if got := dgst.Algorithm().FromBytes(b); got != dgst {
		return nil, "", errDigestMismatch("digest", dgst, got)
	}
	return b, manifestMediaType(resp.Header.Get("Content-Type"), b), nil
}

// manifestMediaType prefers the response's Content-Type unless it is missing
// or generic, then the document's own mediaType field.
func manifestMediaType(contentType string, b []byte) string {
	mt, _, err := mime.ParseMediaType(contentType)
	if err == nil && mt != "application/json" && mt != "application/octet-stream" && mt != "text/plain" {
		return mt
	}
	var doc struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(b, &doc) == nil && doc.MediaType != "" {
		return doc.MediaType
	}
	return mt
}

// FetchBlob reads the whole blob desc of ref's repository into memory,
// checking its size and digest. Blobs larger than MaxBlobSize are refused;
// use Blob for those.
func (c *Client) FetchBlob(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	start := time.Now()
	b, err := c.fetchBlob(ctx, ref, desc)
	c.observe(KindBlob, start, int64(len(b)))
	if err != nil {
		return nil, fmt.Errorf("fetch blob %s of %s: %w", desc.Digest, ref, err)
	}
	return b, nil
}

func (c *Client) fetchBlob(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	if desc.Size < 0 || desc.Size > MaxBlobSize {
		return nil, fmt.Errorf("size %d outside [0, %d]: %w", desc.Size, MaxBlobSize, errdefs.ErrInvalidArgument)
	}
	repo, err := parseRef(ref)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, _, err := c.get(ctx, repo, docker.HostCapabilityPull, "blobs/"+desc.Digest.String(), nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body := time.Now()
	b, err := io.ReadAll(io.LimitReader(resp.Body, desc.Size+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	c.observeBody(KindBlob, body, len(b), nil)
	if n := int64(len(b)); n != desc.Size {
		got := fmt.Sprint(n)
		if n > desc.Size {
			got = fmt.Sprintf("more than %d", desc.Size)
		}
		return nil, errDigestMismatch("size", desc.Size, got)
	}
	if got := desc.Digest.Algorithm().FromBytes(b); got != desc.Digest {
		return nil, errDigestMismatch("digest", desc.Digest, got)
	}
	return b, nil
}

// readAtMost reads r to its end, failing when it holds more than limit
// bytes.
func readAtMost(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("body larger than %d bytes: %w", limit, errdefs.ErrResourceExhausted)
	}
	return b, nil
}
