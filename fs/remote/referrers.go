package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Referrers lists the manifests of ref's repository whose subject is dgst
// and whose artifact type is artifactType (any, when empty), in the order
// the registry gives them. It uses the OCI referrers API and, where the
// registry has none (404), the fallback tag "<alg>-<hex>". No referrers is
// an error wrapping errdefs.ErrNotFound.
func (c *Client) Referrers(ctx context.Context, ref string, dgst digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	start := time.Now()
	descs, err := c.referrers(ctx, ref, dgst, artifactType)
	c.observe(KindManifest, start, 0)
	if err != nil {
		return nil, fmt.Errorf("list referrers of %s in %s: %w", dgst, ref, err)
	}
	return descs, nil
}

func (c *Client) referrers(ctx context.Context, ref string, dgst digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	if err := dgst.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	repo, err := parseRef(ref)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	index, err := c.referrersIndex(ctx, repo, dgst, artifactType)
	if err != nil {
		return nil, err
	}
	var out []ocispec.Descriptor
	for _, d := range index.Manifests {
		if artifactType == "" || d.ArtifactType == artifactType {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no referrers of type %q: %w", artifactType, errdefs.ErrNotFound)
	}
	return out, nil
}

// referrersIndex asks the referrers API, then reads the fallback tag when
// the API answers 404 or no endpoint offers it. Like containerd, the
// fallback goes to the referrers endpoints when there are any, else to the
// resolve endpoints.
func (c *Client) referrersIndex(ctx context.Context, repo repository, dgst digest.Digest, artifactType string) (ocispec.Index, error) {
	header := http.Header{"Accept": {ocispec.MediaTypeImageIndex}}
	var query url.Values
	if artifactType != "" {
		query = url.Values{"artifactType": {artifactType}}
	}
	hosts, err := c.registryHosts(ctx, repo.host)
	if err != nil {
		return ocispec.Index{}, err
	}
	fallback := docker.HostCapabilityResolve
	if hasCapability(hosts, docker.HostCapabilityReferrers) {
		fallback = docker.HostCapabilityReferrers
		index, err := c.getIndex(ctx, repo, docker.HostCapabilityReferrers, "referrers/"+dgst.String(), query, header)
		if !errors.Is(err, errdefs.ErrNotFound) {
			return index, err
		}
	}
	tag := strings.Replace(dgst.String(), ":", "-", 1)
	index, err := c.getIndex(ctx, repo, fallback, "manifests/"+tag, nil, header)
	if err != nil {
		return ocispec.Index{}, fmt.Errorf("fallback tag %s: %w", tag, err)
	}
	return index, nil
}

func (c *Client) getIndex(ctx context.Context, repo repository, capability docker.HostCapabilities,
	suffix string, query url.Values, header http.Header) (ocispec.Index, error) {
	resp, _, err := c.get(ctx, repo, capability, suffix, query, header)
	if err != nil {
		return ocispec.Index{}, err
	}
	defer resp.Body.Close()
	b, err := readAtMost(resp.Body, MaxManifestSize)
	if err != nil {
		return ocispec.Index{}, err
	}
	var index ocispec.Index
	if err := json.Unmarshal(b, &index); err != nil {
		return ocispec.Index{}, fmt.Errorf("decode referrers index from %s: %w: %w",
			redact(resp.Request.URL.String()), err, errdefs.ErrInvalidArgument)
	}
	return index, nil
}

func hasCapability(hosts []docker.RegistryHost, capability docker.HostCapabilities) bool {
	for _, h := range hosts {
		if h.Capabilities.Has(capability) {
			return true
		}
	}
	return false
}
