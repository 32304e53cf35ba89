package remote

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// maxRangeSkip bounds the bytes skipped in a whole-blob answer (200) to a
// range request: reading further to reach a span would cost a download of
// the layer per read. Such a read fails instead.
const maxRangeSkip = 64 << 20

// errBadRange is wrapped by errors for range responses that do not answer
// the request (a wrong or malformed Content-Range, inconsistent lengths).
var errBadRange = errors.New("range response does not match the request")

// contentRange is a parsed Content-Range "bytes first-last/total"; total is
// -1 when the server gives "*".
type contentRange struct {
	first, last, total int64
}

// parseContentRange parses the value of a Content-Range header of a 206
// response with one range. It accepts only "bytes first-last/total" (total
// may be "*") with decimal numbers that fit in an int64, first <= last, and
// last < total.
func parseContentRange(v string) (contentRange, error) {
	bad := func(why string) (contentRange, error) {
		return contentRange{}, fmt.Errorf("Content-Range %q: %s: %w", truncate(v, 100), why, errBadRange)
	}
	unit, spec, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return bad("not a byte range")
	}
	rng, total, ok := strings.Cut(spec, "/")
	if !ok {
		return bad("no total length")
	}
	first, last, ok := strings.Cut(rng, "-")
	if !ok {
		return bad("not first-last")
	}
	var cr contentRange
	var err error
	if cr.first, err = parseLength(first); err != nil {
		return bad("first byte: " + err.Error())
	}
	if cr.last, err = parseLength(last); err != nil {
		return bad("last byte: " + err.Error())
	}
	cr.total = -1
	if total != "*" {
		if cr.total, err = parseLength(total); err != nil {
			return bad("total length: " + err.Error())
		}
	}
	switch {
	case cr.last < cr.first:
		return bad("last byte before first")
	case cr.total >= 0 && cr.last >= cr.total:
		return bad("last byte beyond the total length")
	}
	return cr, nil
}

// parseLength parses a non-negative decimal int64 with digits only (no
// sign, no spaces, at most 19 digits).
func parseLength(s string) (int64, error) {
	if s == "" || len(s) > 19 {
		return 0, errors.New("not a length")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errors.New("not a length")
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// truncate shortens a header value quoted in an error.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// readRangeBody fills p with the blob's bytes at off from the response to
// the request "Range: bytes=off-(off+len(p)-1)" of a blob of size bytes
// (<= 0: unknown; when known, p does not reach past the blob's end).
//
// A 206 must carry one Content-Range starting at off and ending at the
// request's end, or at the blob's end when the size is unknown, with a
// total matching the size and a Content-Length (if any) matching the range.
// A 200 is the whole blob: its length (if given) must match the size; the
// first off bytes (at most maxRangeSkip) are skipped. Only the bytes asked
// for are read, whatever the body holds beyond them; a body ending early
// is a *bodyError wrapping io.ErrUnexpectedEOF (worth a retry). The result
// is len(p) bytes, or fewer with io.EOF at the end of a blob of unknown
// size.
func readRangeBody(resp *http.Response, body io.Reader, p []byte, off, size int64) (int, error) {
	url := redact(resp.Request.URL.String())
	var want int64 // bytes the response must deliver; -1: up to len(p), fewer at its end
	switch resp.StatusCode {
	case http.StatusPartialContent:
		n, err := partialLength(resp, int64(len(p)), off, size)
		if err != nil {
			return 0, fmt.Errorf("GET %s: %w", url, err)
		}
		want = n
	case http.StatusOK:
		end, err := skipTo(resp, body, off, size)
		if err != nil {
			if err == io.EOF {
				return 0, io.EOF
			}
			return 0, fmt.Errorf("GET %s: %w", url, err)
		}
		want = -1
		if end >= 0 {
			want = min(int64(len(p)), end-off)
		}
	default:
		return 0, newStatusError(resp, nil)
	}
	if want < 0 {
		n, err := io.ReadFull(body, p)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return n, io.EOF // the blob, of unknown size, ends here
		}
		if err != nil {
			return n, &bodyError{fmt.Errorf("read response body of GET %s after %d of %d bytes: %w", url, n, len(p), err)}
		}
		return n, nil
	}
	n, err := io.ReadFull(body, p[:want])
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return n, &bodyError{fmt.Errorf("read response body of GET %s after %d of %d bytes: %w", url, n, want, err)}
	}
	if want < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// partialLength checks a 206 response to the range [off, off+n) of a blob
// of size bytes (<= 0: unknown) and returns how many bytes it carries.
func partialLength(resp *http.Response, n, off, size int64) (int64, error) {
	if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(strings.ToLower(ct), "multipart/") {
		return 0, fmt.Errorf("multipart range response not supported: %w", errdefs.ErrNotImplemented)
	}
	crs := resp.Header.Values("Content-Range")
	if len(crs) != 1 {
		return 0, fmt.Errorf("%d Content-Range headers in a 206 response: %w", len(crs), errBadRange)
	}
	cr, err := parseContentRange(crs[0])
	if err != nil {
		return 0, err
	}
	last := off + n - 1
	switch {
	case cr.first != off:
		return 0, fmt.Errorf("Content-Range %q starts at %d, asked %d: %w", truncate(crs[0], 100), cr.first, off, errBadRange)
	case size > 0 && cr.total >= 0 && cr.total != size:
		return 0, fmt.Errorf("Content-Range %q: total %d, the blob has %d bytes: %w", truncate(crs[0], 100), cr.total, size, errBadRange)
	case cr.last > last:
		return 0, fmt.Errorf("Content-Range %q ends after %d, the end asked: %w", truncate(crs[0], 100), last, errBadRange)
	case cr.last < last && (size > 0 || cr.total < 0 || cr.last != cr.total-1):
		return 0, fmt.Errorf("Content-Range %q ends before %d, the end asked, and not at the blob's end: %w", truncate(crs[0], 100), last, errBadRange)
	}
	got := cr.last - cr.first + 1
	if resp.ContentLength >= 0 && resp.ContentLength != got {
		return 0, fmt.Errorf("Content-Length %d for Content-Range %q: %w", resp.ContentLength, truncate(crs[0], 100), errBadRange)
	}
	return got, nil
}

// skipTo checks a 200 (whole blob) response to a range request at off of a
// blob of size bytes (<= 0: unknown) and skips its first off bytes. It
// returns the blob's end as far as known (size, else the response's
// Content-Length; -1: unknown), or io.EOF when off is past the end of a
// blob of unknown size.
func skipTo(resp *http.Response, body io.Reader, off, size int64) (int64, error) {
	end := size
	if size <= 0 {
		end = resp.ContentLength
	}
	switch {
	case size > 0 && resp.ContentLength >= 0 && resp.ContentLength != size:
		return 0, fmt.Errorf("whole-blob response of %d bytes to a range request, the blob has %d: %w", resp.ContentLength, size, errBadRange)
	case end >= 0 && off >= end:
		return 0, io.EOF
	case off > maxRangeSkip:
		return 0, fmt.Errorf("registry ignored the range request: refusing to skip %d bytes of the whole blob (at most %d): %w", off, int64(maxRangeSkip), errdefs.ErrNotImplemented)
	}
	skipped, err := io.CopyN(io.Discard, body, off)
	switch {
	case err == io.EOF && end < 0:
		return 0, io.EOF // the blob, of unknown size, ends before off
	case err == io.EOF:
		return 0, &bodyError{fmt.Errorf("skip to offset %d of a whole-blob response: body ended after %d bytes: %w", off, skipped, io.ErrUnexpectedEOF)}
	case err != nil:
		return 0, &bodyError{fmt.Errorf("skip to offset %d of a whole-blob response: %w", off, err)}
	}
	return end, nil
}
