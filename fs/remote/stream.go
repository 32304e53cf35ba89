package remote

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Open streams the whole blob, for downloading a layer. ctx must stay live
// while the stream is read. Reading to the end checks the blob's size (when
// known) and digest: a mismatch is returned instead of io.EOF. Each read
// (and the wait for the response) is bounded by the Client's Timeout.
func (b *Blob) Open(ctx context.Context) (io.ReadCloser, error) {
	if err := b.desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("open blob %q: %w: %w", b.desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	repo, err := parseRef(b.ref)
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", b.desc.Digest, err)
	}
	wctx, wd := startWatchdog(ctx, b.c.timeout, b.c.afterFunc)
	resp, _, err := b.c.send(wctx, b.c.blobRetry, repo, docker.HostCapabilityPull, "blobs/"+b.desc.Digest.String(), nil, nil)
	if err != nil {
		wd.stop()
		return nil, fmt.Errorf("open blob %s of %s: %w", b.desc.Digest, b.ref, wd.explain(err))
	}
	wd.pause()
	return &blobStream{
		body:     resp.Body,
		r:        watchedReader{r: resp.Body, w: wd},
		wd:       wd,
		desc:     b.desc.Digest,
		size:     b.desc.Size,
		digester: b.desc.Digest.Algorithm().Digester(),
	}, nil
}

// blobStream is a blob's body that verifies what it delivers.
type blobStream struct {
	body     io.Closer
	r        io.Reader
	wd       *watchdog
	desc     digest.Digest
	size     int64 // <= 0: unknown
	n        int64
	digester digest.Digester
}

func (s *blobStream) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	_, _ = s.digester.Hash().Write(p[:n])
	if s.size > 0 && s.n > s.size {
		return n, fmt.Errorf("read blob %s: %w", s.desc, errDigestMismatch("size", s.size, fmt.Sprintf("more than %d", s.size)))
	}
	if err == io.EOF {
		return n, s.verify()
	}
	if err != nil {
		return n, fmt.Errorf("read blob %s: %w", s.desc, err)
	}
	return n, nil
}

func (s *blobStream) verify() error {
	if s.size > 0 && s.n != s.size {
		return fmt.Errorf("read blob %s: %w", s.desc, errDigestMismatch("size", s.size, s.n))
	}
	if got := s.digester.Digest(); got != s.desc {
		return fmt.Errorf("read blob %s: %w", s.desc, errDigestMismatch("digest", s.desc, got))
	}
	return io.EOF
}

func (s *blobStream) Close() error {
	s.wd.stop()
	return s.body.Close()
}
