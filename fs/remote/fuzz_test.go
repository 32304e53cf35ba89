package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func FuzzContentRange(f *testing.F) {
	for _, s := range []string{
		"bytes 0-0/1", "bytes 100-199/1000", "bytes 100-199/*", "BYTES 1-2/3", "bytes */1000",
		"bytes 5-4/10", "bytes 0-9/5", "bytes -1-5/10", "bytes +1-5/10", "bytes 1-+5/10",
		"bytes 9223372036854775807-9223372036854775807/*", "bytes 0-99999999999999999999/1",
		"bytes 0-1/2 ", " bytes 0-1/2", "bytes 0 -1/2", "bytes 0-1", "bytes", "", "bytes 0-1/2/3",
		"items 0-1/2", "bytes 0x1-2/3", "bytes ٣-4/5",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		cr, err := parseContentRange(v)
		if err != nil {
			if !errors.Is(err, errBadRange) {
				t.Fatalf("parseContentRange(%q): error %v does not wrap errBadRange", v, err)
			}
			return
		}
		if cr.first < 0 || cr.last < cr.first || cr.total < -1 || cr.total >= 0 && cr.last >= cr.total {
			t.Fatalf("parseContentRange(%q) = %+v: inconsistent", v, cr)
		}
		total := "*"
		if cr.total >= 0 {
			total = strconv.FormatInt(cr.total, 10)
		}
		again, err := parseContentRange(fmt.Sprintf("bytes %d-%d/%s", cr.first, cr.last, total))
		if err != nil || again != cr {
			t.Fatalf("parseContentRange(%q) = %+v, its canonical form gives %+v, %v", v, cr, again, err)
		}
	})
}

// rawResponse is one response a fuzzed registry writes byte for byte.
type rawResponse struct {
	status        int
	contentRange  []string
	contentLength []string
	body          []byte
}

// sanitize keeps a fuzzed header value on its line.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, s)
}

// fuzzStatuses are the statuses a fuzzed registry answers with.
var fuzzStatuses = []int{206, 200, 206, 200, 204, 301, 404, 416, 429, 500}

// FuzzRangeResponse feeds a status, Content-Range and Content-Length
// headers and a body, written raw by a registry over a real connection, to
// Blob.FetchAt: it never panics, returns exactly the bytes asked (taken
// from the right place of the body) or an error, and allocates a bounded
// amount whatever the headers claim.
func FuzzRangeResponse(f *testing.F) {
	const size = 4096
	blob := blobContent(size)
	var cur atomic.Pointer[rawResponse]
	reg := newHostileRegistry(f, func(w http.ResponseWriter, req *http.Request) {
		r := cur.Load()
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\nConnection: close\r\n", r.status, http.StatusText(r.status))
		for _, v := range r.contentRange {
			fmt.Fprintf(buf, "Content-Range: %s\r\n", v)
		}
		for _, v := range r.contentLength {
			fmt.Fprintf(buf, "Content-Length: %s\r\n", v)
		}
		buf.WriteString("\r\n")
		buf.Write(r.body)
		buf.Flush()
	})
	reg.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	c := noRetry(Options{})

	add := func(status uint8, cr, cl string, bodyStart, bodyLen uint16, junk []byte, off, n uint16, sizeKnown bool) {
		f.Add(status, cr, cl, bodyStart, bodyLen, junk, off, n, sizeKnown)
	}
	add(0, "bytes 100-199/4096", "100", 100, 100, nil, 100, 100, true)                  // honest
	add(0, "bytes 100-199/4096", "", 100, 1000, nil, 100, 100, true)                    // longer body, no length
	add(0, "bytes 100-199/4096", "100", 100, 60, nil, 100, 100, true)                   // truncated
	add(0, "bytes 0-99/4096", "100", 0, 100, nil, 100, 100, true)                       // wrong start
	add(0, "bytes 100-299/4096", "200", 100, 200, nil, 100, 100, true)                  // wrong end
	add(0, "bytes 100-199/9999", "100", 100, 100, nil, 100, 100, true)                  // wrong total
	add(0, "bytes 100-99/4096", "100", 100, 100, nil, 100, 100, false)                  // end before start
	add(0, "bytes 4000-4095/4096", "96", 4000, 96, nil, 4000, 200, false)               // end of a blob of unknown size
	add(0, "bytes 4000-4095/*", "96", 4000, 96, nil, 4000, 200, false)                  // ... without a total
	add(0, "bytes 100-199/4096", "99999999999999999999", 100, 100, nil, 100, 100, true) // huge length
	add(0, "bytes 100-199/4096", "-5", 100, 100, nil, 100, 100, true)                   // negative length
	add(0, "bytes 100-199/4096\x00", "100", 100, 100, nil, 100, 100, true)              // NUL
	add(1, "", "4096", 0, 4096, nil, 100, 100, true)                                    // whole blob
	add(1, "", "", 0, 4096, nil, 100, 100, false)                                       // whole blob, size unknown
	add(1, "", "9223372036854775807", 0, 4096, nil, 100, 100, true)                     // whole blob, lying length
	add(1, "", "", 0, 50, nil, 100, 100, false)                                         // whole blob ends before off
	add(1, "", "", 0, 150, nil, 100, 100, true)                                         // whole blob cut short
	add(4, "", "", 0, 0, nil, 0, 10, true)                                              // 204
	add(7, "bytes */4096", "0", 0, 0, nil, 5000, 10, false)                             // 416 past the end
	add(9, "", "", 0, 0, []byte(`{"errors":[{"code":"X"}]}`), 0, 10, true)              // 500

	f.Fuzz(func(t *testing.T, status uint8, cr, cl string, bodyStart, bodyLen uint16, junk []byte, off, n uint16, sizeKnown bool) {
		lo := min(int(bodyStart), size)
		hi := min(lo+int(bodyLen), size)
		body := append(append([]byte(nil), blob[lo:hi]...), junk[:min(len(junk), 4096)]...)
		r := &rawResponse{status: fuzzStatuses[int(status)%len(fuzzStatuses)], body: body}
		for _, v := range strings.SplitN(cr, "|", 3) {
			if v != "" {
				r.contentRange = append(r.contentRange, sanitize(v))
			}
		}
		for _, v := range strings.SplitN(cl, "|", 3) {
			if v != "" {
				r.contentLength = append(r.contentLength, sanitize(v))
			}
		}
		cur.Store(r)
		desc := ocispec.Descriptor{Digest: digest.FromString("fuzz"), Size: 0}
		if sizeKnown {
			desc.Size = size
		}
		p := make([]byte, n)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		got, err := c.Blob(reg.ref(), desc).FetchAt(ctx, p, int64(off))
		runtime.ReadMemStats(&after)
		if ctx.Err() != nil {
			t.Fatalf("FetchAt hung on status %d, Content-Range %q, Content-Length %q, %d body bytes: %v",
				r.status, r.contentRange, r.contentLength, len(body), err)
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
			t.Fatalf("a read of %d bytes allocated %d bytes", n, alloc)
		}
		want := int64(n)
		if sizeKnown {
			want = max(min(want, size-int64(off)), 0)
		}
		if err != nil && err != io.EOF {
			return
		}
		if got < 0 || int64(got) > want || err == nil && int64(got) != want {
			t.Fatalf("FetchAt(%d bytes at %d) = %d, %v; want %d bytes", n, off, got, err, want)
		}
		if got == 0 {
			return
		}
		from := 0 // where the bytes asked for are in the body
		if r.status == http.StatusOK {
			from = int(off)
		}
		if from+got > len(body) || !bytes.Equal(p[:got], body[from:from+got]) {
			t.Fatalf("FetchAt(%d bytes at %d) returned %d bytes that are not the body's bytes at %d (status %d, body %d bytes)",
				n, off, got, from, r.status, len(body))
		}
	})
}
