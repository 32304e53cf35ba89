package harness

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Hostility is how a HostileProxy answers a range read of its target blob.
type Hostility int

const (
	// Honest passes every request on to the registry.
	Honest Hostility = iota
	// WholeBlob answers 200 with the whole blob, ignoring the Range.
	WholeBlob
	// ShiftedRange answers 206 with the bytes (and a matching
	// Content-Range) of a range starting ShiftBytes later than asked.
	ShiftedRange
	// ShortRange answers 206 with the first half of the asked range and a
	// Content-Range saying so.
	ShortRange
	// GarbageRange answers 206 with the asked bytes and a Content-Range
	// whose start is right but whose end and total are not numbers.
	GarbageRange
	// WrongTotal answers 206 with the asked bytes and range but a total
	// size that is not the blob's.
	WrongTotal
	// TruncatedBody answers 206 with the right headers (Content-Length
	// included), sends half the body and resets the connection.
	TruncatedBody
	// LongBody answers 206 with the right Content-Range, the asked bytes
	// and then LongBodyExtra bytes of junk (Content-Length counts them).
	LongBody
	// Redirect answers 307 to the proxy's blob store, a second listener on
	// another loopback address that serves the blob from the registry's
	// storage and records the headers it gets.
	Redirect
	// CorruptBytes answers 206 with the right headers and length but 64
	// bytes in the middle of the body inverted.
	CorruptBytes
	// RedirectChallenge redirects like Redirect, but the blob store answers
	// 401 with a Basic challenge, fishing for the registry's credentials.
	RedirectChallenge
)

var hostilityNames = map[Hostility]string{
	Honest: "honest", WholeBlob: "whole blob", ShiftedRange: "shifted range",
	ShortRange: "short range", GarbageRange: "garbage Content-Range", WrongTotal: "wrong total",
	TruncatedBody: "truncated body", LongBody: "long body", Redirect: "redirect",
	CorruptBytes: "corrupt bytes", RedirectChallenge: "redirect, 401 there",
}

func (h Hostility) String() string {
	if s, ok := hostilityNames[h]; ok {
		return s
	}
	return fmt.Sprintf("Hostility(%d)", int(h))
}

const (
	// ShiftBytes is how much later than asked a ShiftedRange answer starts.
	ShiftBytes = 4096
	// LongBodyExtra is how many junk bytes a LongBody answer appends.
	LongBodyExtra = 32 << 20
	// RedirectSecret is the fake pre-signed URL signature in Redirect's
	// Location; it must never appear in a log.
	RedirectSecret = "sig-Hq7Wd2Lr9xPz"
)

// blobPath matches the path of a blob request; the repository name may
// hold slashes.
var blobPath = regexp.MustCompile(`^/v2/(.+)/blobs/(sha256:[0-9a-f]{64})$`)

// HostileProxy is an HTTP reverse proxy on 127.0.0.1 in front of a registry
// that, on command, misbehaves on range reads (GET with a Range header) of
// one blob, and passes every other request (manifests, whole blobs, auth
// challenges) on unchanged.
type HostileProxy struct {
	// Host is "127.0.0.1:PORT", to be used in image refs.
	Host     string
	upstream string
	storage  string
	srv      *http.Server
	rp       *httputil.ReverseProxy
	client   *http.Client
	store    *blobStore

	mu     sync.Mutex
	target string // digest whose range reads are answered with mode
	mode   Hostility
	served map[Hostility]int
}

// StartHostileProxy proxies to upstream ("host:port", plain HTTP). storage
// is the registry's storage root, from which Redirect's blob store serves
// blobs; storeAddr is the loopback address that store listens on (e.g.
// "127.0.0.2", another host than the proxy's 127.0.0.1).
func StartHostileProxy(upstream, storage, storeAddr string) (*HostileProxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for hostile proxy: %w", err)
	}
	store, err := startBlobStore(storeAddr, storage)
	if err != nil {
		l.Close()
		return nil, err
	}
	p := &HostileProxy{
		Host: l.Addr().String(), upstream: upstream, storage: storage, store: store,
		rp:     httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: upstream}),
		client: &http.Client{Timeout: time.Minute, Transport: http.DefaultTransport.(*http.Transport).Clone()},
		served: map[Hostility]int{},
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(l) }()
	return p, nil
}

// Set makes range reads of blob dgst ("sha256:...") get answers of kind h;
// Honest ends the misbehaviour.
func (p *HostileProxy) Set(dgst string, h Hostility) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target, p.mode = dgst, h
}

// Served is how many range reads got an answer of kind h (Redirect: how
// many were redirected; see StoreRequests for what followed).
func (p *HostileProxy) Served(h Hostility) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.served[h]
}

// StoreHost is "ADDR:PORT" of the blob store Redirect sends readers to.
func (p *HostileProxy) StoreHost() string { return p.store.host }

// StoreRequests returns the headers of every request the blob store got.
func (p *HostileProxy) StoreRequests() []http.Header { return p.store.requests() }

// CloseStore stops the blob store: readers that remembered its URL must go
// back to the registry.
func (p *HostileProxy) CloseStore() error { return p.store.srv.Close() }

// Close stops the proxy and its blob store.
func (p *HostileProxy) Close() error {
	_ = p.store.srv.Close()
	return p.srv.Close()
}

func (p *HostileProxy) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	m := blobPath.FindStringSubmatch(req.URL.Path)
	rng := req.Header.Get("Range")
	p.mu.Lock()
	mode := p.mode
	if m == nil || req.Method != http.MethodGet || rng == "" || m[2] != p.target {
		mode = Honest
	}
	p.mu.Unlock()
	first, last, ok := parseRange(rng)
	if mode == Honest || !ok {
		p.rp.ServeHTTP(w, req)
		return
	}
	if mode == Redirect || mode == RedirectChallenge {
		p.count(mode)
		loc := fmt.Sprintf("http://%s/blobs/%s?X-Amz-Signature=%s", p.store.host, m[2], RedirectSecret)
		if mode == RedirectChallenge {
			loc += "&challenge=1"
		}
		http.Redirect(w, req, loc, http.StatusTemporaryRedirect)
		return
	}
	// Ask the registry for the bytes the hostile answer is made of, with the
	// reader's own credentials.
	up := rng
	switch mode {
	case WholeBlob:
		up = ""
	case ShiftedRange:
		up = fmt.Sprintf("bytes=%d-%d", first+ShiftBytes, last+ShiftBytes)
	case ShortRange:
		up = fmt.Sprintf("bytes=%d-%d", first, first+(last-first+1)/2-1)
	}
	resp, err := p.fetch(req, up)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
		passOn(w, resp) // an auth challenge, say: the reader must see it
		return
	}
	p.count(mode)
	h := w.Header()
	for _, k := range []string{"Content-Type", "Docker-Content-Digest", "Content-Range", "Content-Length"} {
		if v := resp.Header.Get(k); v != "" {
			h.Set(k, v)
		}
	}
	switch mode {
	case WholeBlob, ShiftedRange, ShortRange:
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	case GarbageRange:
		h.Set("Content-Range", fmt.Sprintf("bytes %d-x%d/y", first, last))
		w.WriteHeader(http.StatusPartialContent)
		_, _ = io.Copy(w, resp.Body)
	case WrongTotal:
		_, total, _ := strings.Cut(resp.Header.Get("Content-Range"), "/")
		n, _ := strconv.ParseInt(total, 10, 64)
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, n+12345))
		w.WriteHeader(http.StatusPartialContent)
		_, _ = io.Copy(w, resp.Body)
	case TruncatedBody:
		body, _ := io.ReadAll(resp.Body)
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(body[:len(body)/2])
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // the connection is closed mid-body
	case LongBody:
		n, _ := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64)
		h.Set("Content-Length", strconv.FormatInt(n+LongBodyExtra, 10))
		w.WriteHeader(http.StatusPartialContent)
		if _, err := io.Copy(w, resp.Body); err != nil {
			return
		}
		junk := make([]byte, 64<<10)
		for i := range junk {
			junk[i] = 0xa5
		}
		for sent := 0; sent < LongBodyExtra; sent += len(junk) {
			if _, err := w.Write(junk); err != nil {
				return
			}
		}
	case CorruptBytes:
		body, _ := io.ReadAll(resp.Body)
		mid := len(body) / 2
		for i := mid; i < min(mid+64, len(body)); i++ {
			body[i] ^= 0xff
		}
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(body)
	}
}

func (p *HostileProxy) count(h Hostility) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.served[h]++
}

// fetch sends req's GET to the registry with Range rng ("" for none).
func (p *HostileProxy) fetch(req *http.Request, rng string) (*http.Response, error) {
	out, err := http.NewRequestWithContext(req.Context(), http.MethodGet, "http://"+p.upstream+req.URL.RequestURI(), nil)
	if err != nil {
		return nil, err
	}
	for _, k := range []string{"Authorization", "Accept", "User-Agent"} {
		if v := req.Header.Get(k); v != "" {
			out.Header.Set(k, v)
		}
	}
	if rng != "" {
		out.Header.Set("Range", rng)
	}
	return p.client.Do(out)
}

// passOn copies a registry response to w unchanged.
func passOn(w http.ResponseWriter, resp *http.Response) {
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// parseRange parses a single "bytes=first-last" range.
func parseRange(v string) (first, last int64, ok bool) {
	spec, ok := strings.CutPrefix(v, "bytes=")
	if !ok {
		return 0, 0, false
	}
	a, b, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, false
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || first < 0 || last < first {
		return 0, 0, false
	}
	return first, last, true
}

// blobStore stands for blob storage a registry redirects to: it serves
// GET /blobs/<digest> (ranges included) from a registry's storage root and
// records the headers of every request. With the query challenge=1 it
// answers 401 with a Basic challenge instead.
type blobStore struct {
	host    string
	storage string
	srv     *http.Server

	mu   sync.Mutex
	seen []http.Header
}

func startBlobStore(addr, storage string) (*blobStore, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return nil, fmt.Errorf("listen for blob store on %s: %w", addr, err)
	}
	s := &blobStore{host: l.Addr().String(), storage: storage}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

func (s *blobStore) requests() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]http.Header, len(s.seen))
	for i, h := range s.seen {
		out[i] = h.Clone()
	}
	return out
}

var storeBlobPath = regexp.MustCompile(`^/blobs/sha256:([0-9a-f]{64})$`)

func (s *blobStore) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	s.mu.Lock()
	s.seen = append(s.seen, req.Header.Clone())
	s.mu.Unlock()
	m := storeBlobPath.FindStringSubmatch(req.URL.Path)
	if m == nil || req.URL.Query().Get("X-Amz-Signature") != RedirectSecret {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	if req.URL.Query().Get("challenge") != "" {
		w.Header().Set("WWW-Authenticate", `Basic realm="blob-store"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	f, err := os.Open(filepath.Join(s.storage, "docker/registry/v2/blobs/sha256", m[1][:2], m[1], "data"))
	if err != nil {
		http.NotFound(w, req)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, req, "", time.Time{}, f)
}
