package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Blob reads one blob of a repository by ranges. When
// the registry redirects a range read to blob storage, the storage URL is
// remembered and later ranges go there directly until it fails (expired,
// 403, 404, ...) or has not been read successfully for
// Options.DirectURLValidFor, after which the registry is asked again. A Blob
// is safe for concurrent use.
type Blob struct {
	c    *Client
	ref  string
	desc ocispec.Descriptor

	mu     sync.Mutex
	direct *directURL
}

// directURL is a blob storage location a registry redirected to.
type directURL struct {
	url  string
	host docker.RegistryHost // the endpoint that redirected; its HTTP client is reused
	used time.Time           // its last successful read (or the redirect); guarded by Blob.mu
}

// Blob returns a reader of desc in ref's repository. desc.Size <= 0 means
// the size is unknown: reads then learn the end of the blob from the
// registry. Errors in ref show up on the first read.
func (c *Client) Blob(ref string, desc ocispec.Descriptor) *Blob {
	return &Blob{c: c, ref: ref, desc: desc}
}

// FetchAt reads len(p) bytes at offset off of the compressed blob, like
// io.ReaderAt: it returns fewer bytes only at the end of the blob, and then
// io.EOF. Reads are HTTP range requests; a registry that ignores the range
// (200) is handled by skipping to off, up to maxRangeSkip bytes. See
// readRangeBody for what a response must look like.
func (b *Blob) FetchAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read blob %s at %d: negative offset: %w", b.desc.Digest, off, errdefs.ErrInvalidArgument)
	}
	if err := b.desc.Digest.Validate(); err != nil {
		return 0, fmt.Errorf("read blob %q: %w: %w", b.desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	want := int64(len(p))
	if b.desc.Size > 0 {
		if off >= b.desc.Size {
			return 0, io.EOF
		}
		want = min(want, b.desc.Size-off)
	}
	if want == 0 {
		return 0, nil
	}
	start := time.Now()
	n, err := b.readRange(ctx, p[:want], off)
	b.c.observe(KindRange, start, int64(n))
	log.G(ctx).WithField("blob", b.desc.Digest).WithField("offset", off).WithField("bytes", n).
		WithField("took", time.Since(start)).Debug("range read") // the timeline of the link (start = log time - took)
	if err == nil && want < int64(len(p)) {
		err = io.EOF
	}
	if err != nil && err != io.EOF {
		err = fmt.Errorf("read %d bytes at %d of blob %s of %s: %w", want, off, b.desc.Digest, b.ref, err)
	}
	return n, err
}

// readRange reads exactly len(p) bytes at off, or up to the blob's end with
// io.EOF when its size is unknown.
func (b *Blob) readRange(ctx context.Context, p []byte, off int64) (int, error) {
	if d := b.remembered(); d != nil {
		n, err := b.readDirect(ctx, d, p, off)
		if err == nil || err == io.EOF {
			b.used(d)
		}
		if err == nil || err == io.EOF || ctx.Err() != nil {
			return n, err
		}
		b.forget(d)
		log.G(ctx).WithError(err).WithField("blob", b.desc.Digest).Debug("blob storage URL failed, asking the registry again")
	}
	var (
		n   int
		err error
	)
	for attempt := 1; attempt <= 2; attempt++ { // a body cut short is retried once
		n, err = b.readViaRegistry(ctx, p, off)
		var be *bodyError
		if !errors.As(err, &be) || ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			break
		}
		log.G(ctx).WithError(err).WithField("blob", b.desc.Digest).Debug("retrying range read")
	}
	return n, err
}

func (b *Blob) readViaRegistry(ctx context.Context, p []byte, off int64) (int, error) {
	repo, err := parseRef(b.ref)
	if err != nil {
		return 0, err
	}
	wctx, wd := startWatchdog(ctx, b.c.timeout, b.c.afterFunc)
	defer wd.stop()
	header := http.Header{"Range": {rangeValue(off, len(p))}}
	var ignoredRange []string // endpoints that answered with the whole blob, too far to skip
	var rangeErr error        // what the last of them made of the read
	for {
		resp, host, err := b.c.sendExcept(wctx, b.c.blobRetry, repo, docker.HostCapabilityPull, "blobs/"+b.desc.Digest.String(), nil, header, ignoredRange)
		switch {
		case err != nil && rangeErr != nil && errors.Is(err, errNoEndpoint):
			return 0, rangeErr // no other endpoint to ask
		case err != nil && rangeErr != nil:
			return 0, b.endOfBlob(wd.explain(fmt.Errorf("%w; the next endpoint: %w", rangeErr, err)))
		case err != nil:
			return 0, b.endOfBlob(wd.explain(err))
		}
		wd.pause()
		if u, moved := finalURL(resp); moved && b.c.opts.DirectURLValidFor >= 0 {
			b.remember(&directURL{url: u.String(), host: host, used: b.c.now()})
		}
		body := time.Now()
		n, err := readRangeBody(resp, watchedReader{r: resp.Body, w: wd}, p, off, b.desc.Size)
		b.c.observeBody(KindRange, body, n, err)
		resp.Body.Close()
		if !errors.Is(err, errdefs.ErrNotImplemented) {
			return n, err
		}
		// A pull-through mirror that has not stored the blob may answer
		// a range request with the whole blob (200): beyond maxRangeSkip
		// the next endpoint (in the end, the origin) is asked instead.
		log.G(ctx).WithError(err).WithField("host", host.Host).WithField("blob", b.desc.Digest).
			Info("registry endpoint ignored the range request; trying the next endpoint")
		ignoredRange, rangeErr = append(ignoredRange, host.Host), err
		wd.resume()
	}
}

func (b *Blob) readDirect(ctx context.Context, d *directURL, p []byte, off int64) (int, error) {
	wctx, wd := startWatchdog(ctx, b.c.timeout, b.c.afterFunc)
	defer wd.stop()
	req, err := http.NewRequestWithContext(wctx, http.MethodGet, d.url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", rangeValue(off, len(p)))
	release, err := b.c.acquire(wctx)
	if err != nil {
		return 0, wd.explain(err)
	}
	resp, err := httpClient(wctx, d.host, false).Do(req)
	if err != nil {
		release()
		return 0, wd.explain(&netError{url: redact(d.url), err: unwrapURLError(err)})
	}
	holdSlot(resp, release)
	wd.pause()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
		return 0, b.endOfBlob(newStatusError(resp, nil))
	}
	body := time.Now()
	n, err := readRangeBody(resp, watchedReader{r: resp.Body, w: wd}, p, off, b.desc.Size)
	b.c.observeBody(KindRange, body, n, err)
	return n, err
}

// endOfBlob turns "range not satisfiable" into io.EOF when the blob's size
// is unknown: the read started at or past its end.
func (b *Blob) endOfBlob(err error) error {
	var se *statusError
	if b.desc.Size <= 0 && errors.As(err, &se) && se.code == http.StatusRequestedRangeNotSatisfiable {
		return io.EOF
	}
	return err
}

// remembered returns the storage URL to read from, if any: one not read
// successfully for DirectURLValidFor is dropped instead.
func (b *Blob) remembered() *directURL {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d, valid := b.direct, b.c.opts.DirectURLValidFor; d != nil && valid > 0 && b.c.now().Sub(d.used) >= valid {
		b.direct = nil
	}
	return b.direct
}

// used records a successful read from d.
func (b *Blob) used(d *directURL) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now := b.c.now(); now.After(d.used) {
		d.used = now
	}
}

func (b *Blob) remember(d *directURL) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.direct = d
}

// forget drops d unless another read already replaced it.
func (b *Blob) forget(d *directURL) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.direct == d {
		b.direct = nil
	}
}

func rangeValue(off int64, n int) string {
	return fmt.Sprintf("bytes=%d-%d", off, off+int64(n)-1)
}

// bodyError is a response body that failed or ended early; the read may
// succeed when retried.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }
