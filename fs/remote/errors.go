package remote

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// statusError is an unexpected HTTP status from a registry or blob storage.
// It unwraps to the errdefs class of the status.
type statusError struct {
	url    string // redacted
	code   int
	detail string // the registry's error codes and messages, if any
	auth   error  // why re-authorization after a 401/403 was not possible
	// retryAfter is the server's Retry-After on a 429 or 503 (0: none).
	retryAfter time.Duration
}

// maxErrorBody bounds how much of an error response is read for details.
const maxErrorBody = 4 << 10

// newStatusError describes resp, reading a bounded part of its body for the
// registry's error message, and closes the body.
func newStatusError(resp *http.Response, auth error) *statusError {
	e := &statusError{url: redact(resp.Request.URL.String()), code: resp.StatusCode, auth: auth}
	if e.code == http.StatusTooManyRequests || e.code == http.StatusServiceUnavailable {
		e.retryAfter = parseRetryAfter(resp.Header, time.Now())
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	_ = resp.Body.Close()
	var doc struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &doc) == nil {
		var parts []string
		for _, d := range doc.Errors {
			parts = append(parts, strings.TrimSpace(d.Code+" "+d.Message))
		}
		e.detail = strings.Join(parts, "; ")
	}
	return e
}

func (e *statusError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s: status %d %s", e.url, e.code, http.StatusText(e.code))
	if e.detail != "" {
		fmt.Fprintf(&b, " (%s)", e.detail)
	}
	if e.auth != nil && !errors.Is(e.auth, errdefs.ErrNotImplemented) {
		fmt.Fprintf(&b, "; authorization: %v", e.auth)
	}
	return b.String()
}

// Unwrap classifies the status with errdefs.
func (e *statusError) Unwrap() error {
	switch {
	case e.code == http.StatusNotFound:
		return errdefs.ErrNotFound
	case e.code == http.StatusUnauthorized:
		return errdefs.ErrUnauthenticated
	case e.code == http.StatusForbidden:
		return errdefs.ErrPermissionDenied
	case e.code == http.StatusTooManyRequests:
		return errdefs.ErrResourceExhausted
	case e.code == http.StatusRequestedRangeNotSatisfiable:
		return errdefs.ErrOutOfRange
	case e.code >= 500:
		return errdefs.ErrUnavailable
	default:
		return errdefs.ErrUnknown
	}
}

// errDigestMismatch marks content whose digest or size is not what was
// asked for.
func errDigestMismatch(what string, want, got any) error {
	return fmt.Errorf("%s mismatch: want %v, got %v: %w", what, want, got, errdefs.ErrDataLoss)
}
