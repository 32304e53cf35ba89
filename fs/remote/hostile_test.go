package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// hostileRegistry answers every blob GET with its handler, which stands for
// a registry that lies about ranges. It counts requests.
type hostileRegistry struct {
	srv  *httptest.Server
	hits atomic.Int64
}

func newHostileRegistry(t testing.TB, h http.HandlerFunc) *hostileRegistry {
	r := &hostileRegistry{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		h(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *hostileRegistry) ref() string { return r.srv.Listener.Addr().String() + "/app:latest" }

// noRetry is a client that does not retry statuses (no waits in tests).
func noRetry(opts Options) *Client {
	opts.Retry = RetryPolicy{MaxRetries: -1}
	opts.BlobRetry = RetryPolicy{MaxRetries: -1}
	return New(opts)
}

// zeros is a body of n zero bytes that counts what was read of it.
type zeros struct {
	n, read int64
}

func (z *zeros) Read(p []byte) (int, error) {
	if z.read >= z.n {
		return 0, io.EOF
	}
	k := int(min(int64(len(p)), z.n-z.read))
	clear(p[:k])
	z.read += int64(k)
	return k, nil
}

// TestWholeBlobAnswerNotReadWhole: a registry answering a 4 KiB range
// request with a 200 and a 1 GiB body is read only up to the window: the
// server manages to send little of it, and the client allocates little.
func TestWholeBlobAnswerNotReadWhole(t *testing.T) {
	const size = 1 << 30
	var sent atomic.Int64
	reg := newHostileRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		n, _ := io.Copy(w, &zeros{n: size})
		sent.Store(n)
	})
	desc := ocispec.Descriptor{Digest: digest.FromString("big"), Size: size}
	b := noRetry(Options{}).Blob(reg.ref(), desc)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	p := make([]byte, 4096)
	n, err := b.FetchAt(t.Context(), p, 1<<20)
	runtime.ReadMemStats(&after)
	if n != len(p) || err != nil {
		t.Fatalf("read of a 200 answer: %d, %v", n, err)
	}
	reg.srv.Close() // waits for the handler
	if got := sent.Load(); got > 64<<20 {
		t.Fatalf("server sent %d bytes of the body: the client read far past the window", got)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
		t.Fatalf("read of a 4 KiB window allocated %d bytes", alloc)
	}
	t.Logf("server sent %d bytes, client allocated %d bytes", sent.Load(), after.TotalAlloc-before.TotalAlloc)
}

// TestWholeBlobAnswerTooFarRefused: a window beyond maxRangeSkip in a
// whole-blob answer fails cleanly, without skipping.
func TestWholeBlobAnswerTooFarRefused(t *testing.T) {
	const size = 1 << 30
	reg := newHostileRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, _ = io.Copy(w, &zeros{n: size})
	})
	desc := ocispec.Descriptor{Digest: digest.FromString("big"), Size: size}
	_, err := noRetry(Options{}).Blob(reg.ref(), desc).FetchAt(t.Context(), make([]byte, 10), maxRangeSkip+1)
	if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), "ignored the range") {
		t.Fatalf("far read of a 200 answer: %v", err)
	}
}

// rangeCase is a 206 answer to "bytes=100-199" of a 1000-byte blob.
type rangeCase struct {
	name          string
	contentRange  []string // none: no header
	contentLength string   // "": the length of body
	body          []byte
	wantErr       error // nil: success with blob[100:200]
	wantHits      int64
}

func TestHostileRangeResponses(t *testing.T) {
	blob := blobContent(1000)
	window := blob[100:200]
	cr := func(s string) []string { return []string{s} }
	cases := []rangeCase{
		{name: "honest", contentRange: cr("bytes 100-199/1000"), body: window, wantHits: 1},
		{name: "unit case", contentRange: cr("BYTES 100-199/1000"), body: window, wantHits: 1},
		{name: "star total", contentRange: cr("bytes 100-199/*"), body: window, wantHits: 1},
		{name: "longer body, chunked", contentRange: cr("bytes 100-199/1000"), contentLength: "-", body: blob[100:], wantHits: 1},
		{name: "wrong start", contentRange: cr("bytes 0-99/1000"), body: blob[:100], wantErr: errBadRange, wantHits: 1},
		{name: "wrong end", contentRange: cr("bytes 100-299/1000"), body: blob[100:300], wantErr: errBadRange, wantHits: 1},
		{name: "short end", contentRange: cr("bytes 100-150/1000"), body: blob[100:151], wantErr: errBadRange, wantHits: 1},
		{name: "wrong total", contentRange: cr("bytes 100-199/2000"), body: window, wantErr: errBadRange, wantHits: 1},
		{name: "end before start", contentRange: cr("bytes 100-99/1000"), body: window, wantErr: errBadRange, wantHits: 1},
		{name: "end past total", contentRange: cr("bytes 100-199/150"), body: window, wantErr: errBadRange, wantHits: 1},
		{name: "huge", contentRange: cr("bytes 100-99999999999999999999/1000"), body: window, wantErr: errBadRange, wantHits: 1},
		{name: "huge total", contentRange: cr("bytes 100-199/9223372036854775807"), body: window, wantErr: errBadRange, wantHits: 1},
		{name: "signed", contentRange: cr("bytes +100-199/1000"), body: window, wantErr: errBadRange, wantHits: 1},
		{name: "garbage", contentRange: cr("bytes=100-199"), body: window, wantErr: errBadRange, wantHits: 1},
		{name: "missing", body: window, wantErr: errBadRange, wantHits: 1},
		{name: "two", contentRange: []string{"bytes 100-199/1000", "bytes 100-199/1000"}, body: window, wantErr: errBadRange, wantHits: 1},
		{name: "length mismatch", contentRange: cr("bytes 100-199/1000"), contentLength: "50", body: window[:50], wantErr: errBadRange, wantHits: 1},
		// A body cut short is retried once, then fails.
		{name: "truncated", contentRange: cr("bytes 100-199/1000"), contentLength: "100", body: window[:60], wantErr: io.ErrUnexpectedEOF, wantHits: 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reg := newHostileRegistry(t, func(w http.ResponseWriter, req *http.Request) {
				for _, v := range tc.contentRange {
					w.Header().Add("Content-Range", v)
				}
				switch tc.contentLength {
				case "":
					w.Header().Set("Content-Length", strconv.Itoa(len(tc.body)))
				case "-": // chunked: no length
				default:
					w.Header().Set("Content-Length", tc.contentLength)
				}
				w.WriteHeader(http.StatusPartialContent)
				if tc.contentLength == "-" {
					w.(http.Flusher).Flush() // headers out: no length, chunked
				}
				_, _ = w.Write(tc.body)
				if tc.name == "truncated" { // end the response before its length
					w.(http.Flusher).Flush()
					panic(http.ErrAbortHandler)
				}
			})
			desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
			p := make([]byte, 100)
			n, err := noRetry(Options{}).Blob(reg.ref(), desc).FetchAt(t.Context(), p, 100)
			switch {
			case tc.wantErr == nil && (err != nil || n != 100 || !bytes.Equal(p, window)):
				t.Fatalf("got %d bytes, %v; want the window", n, err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("got %d bytes, %v; want an error wrapping %v", n, err, tc.wantErr)
			}
			if got := reg.hits.Load(); got != tc.wantHits {
				t.Fatalf("%d requests, want %d", got, tc.wantHits)
			}
		})
	}
}

// TestRedirectPolicy: a registry's redirect to another host gets no
// Authorization; loops, endless chains and other schemes are refused.
func TestRedirectPolicy(t *testing.T) {
	blob := blobContent(1000)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	var sawAuth atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Authorization") != "" {
			sawAuth.Store(true)
		}
		switch req.URL.Path {
		case "/loop":
			http.Redirect(w, req, "/loop2", http.StatusFound)
		case "/loop2":
			http.Redirect(w, req, "/loop", http.StatusFound)
		case "/chain":
			hop, _ := strconv.Atoi(req.URL.Query().Get("hop"))
			http.Redirect(w, req, fmt.Sprintf("/chain?hop=%d", hop+1), http.StatusFound)
		case "/file":
			http.Redirect(w, req, "file:///etc/passwd", http.StatusFound)
		default:
			serveRange(w, req, blob, false)
		}
	}))
	t.Cleanup(other.Close)
	for _, tc := range []struct {
		to      string
		wantErr string
	}{
		{"/store", ""},
		{"/loop", "redirect loop"},
		{"/chain", "stopped after"},
		{"/file", "only http and https"},
	} {
		reg := newHostileRegistry(t, func(w http.ResponseWriter, req *http.Request) {
			if req.Header.Get("Authorization") != "Basic Ym9iOnB3" { // bob:pw
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			http.Redirect(w, req, other.URL+tc.to, http.StatusTemporaryRedirect)
		})
		c := noRetry(Options{Credentials: func(string) (string, string, error) { return "bob", "pw", nil }})
		p := make([]byte, 100)
		n, err := c.Blob(reg.ref(), desc).FetchAt(t.Context(), p, 100)
		switch {
		case tc.wantErr == "" && (err != nil || n != 100 || !bytes.Equal(p, blob[100:200])):
			t.Errorf("redirect to %s: %d, %v", tc.to, n, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("redirect to %s: %v, want %q", tc.to, err, tc.wantErr)
		}
	}
	if sawAuth.Load() {
		t.Fatal("the registry's Authorization reached another host")
	}
}

// TestMaxConcurrencyBoundsRequests: range reads and small fetches of one
// Client share MaxConcurrency slots; a slot is held until the body is
// read, and a request waiting for one honours its context.
func TestMaxConcurrencyBoundsRequests(t *testing.T) {
	blob := blobContent(1000)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	var inFlight, peak atomic.Int64
	gate, arrived := make(chan struct{}), make(chan struct{}, 16)
	reg := newHostileRegistry(t, func(w http.ResponseWriter, req *http.Request) {
		now := inFlight.Add(1)
		defer inFlight.Add(-1)
		for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
		}
		arrived <- struct{}{}
		<-gate
		serveRange(w, req, blob, false)
	})
	var open sync.Once
	release := func() { open.Do(func() { close(gate) }) }
	t.Cleanup(release)
	c := noRetry(Options{MaxConcurrency: 2})
	b := c.Blob(reg.ref(), desc)

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	// The first read holds a slot until its body is read.
	wg.Go(func() {
		if _, err := b.FetchAt(t.Context(), make([]byte, 100), 500); err != nil {
			errs <- err
		}
	})
	<-arrived
	for i := range 4 {
		wg.Go(func() {
			p := make([]byte, 10)
			if _, err := b.FetchAt(t.Context(), p, int64(i*10)); err != nil {
				errs <- err
			}
		})
	}
	<-arrived // one range read has the second slot; the others wait for it
	if c.slots.TryAcquire(1) {
		c.slots.Release(1)
		t.Fatal("two requests in flight, yet the Client has a free slot")
	}
	// A request waiting for a slot gives up with its context.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, _, err := c.FetchManifest(ctx, reg.ref(), digest.FromString("m"))
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "request slots") {
		t.Fatalf("manifest fetch without a slot: %v", err)
	}
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := peak.Load(); got > 2 {
		t.Fatalf("%d requests in flight at once, MaxConcurrency 2", got)
	}
	if !c.slots.TryAcquire(2) {
		t.Fatal("slots not released after the bodies were closed")
	}
}
