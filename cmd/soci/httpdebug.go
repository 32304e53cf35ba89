package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"time"
)

// lineWriter serializes whole messages from concurrent requests.
type lineWriter struct {
	mu  sync.Mutex
	out io.Writer
}

func newLineWriter(out io.Writer) *lineWriter { return &lineWriter{out: out} }

func (w *lineWriter) printf(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fmt.Fprintf(w.out, format, args...)
}

// secretHeaders are never printed: their values are replaced.
var secretHeaders = []string{"Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie"}

// dumpHeaders writes one "prefix Name: value" line per header value, sorted.
func dumpHeaders(b *strings.Builder, prefix string, h http.Header) {
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		for _, v := range h[k] {
			if slices.Contains(secretHeaders, http.CanonicalHeaderKey(k)) {
				v = "<redacted>"
			}
			fmt.Fprintf(b, "%s %s: %s\n", prefix, k, v)
		}
	}
}

// dumpTransport prints each request and response (status line and
// headers; bodies are blobs and tokens, so they are left out) for
// --http-dump.
type dumpTransport struct {
	next http.RoundTripper
	out  *lineWriter
}

func (t *dumpTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "> %s %s %s\n", req.Method, req.URL.String(), req.Proto)
	fmt.Fprintf(&b, "> Host: %s\n", req.URL.Host)
	dumpHeaders(&b, ">", req.Header)
	if req.ContentLength > 0 {
		fmt.Fprintf(&b, "> (body: %d bytes)\n", req.ContentLength)
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		fmt.Fprintf(&b, "< error: %v\n", err)
		t.out.printf("%s\n", b.String())
		return nil, err
	}
	fmt.Fprintf(&b, "< %s %s\n", resp.Proto, resp.Status)
	dumpHeaders(&b, "<", resp.Header)
	t.out.printf("%s\n", b.String())
	return resp, nil
}

// traceTransport prints the connection events of each request for
// --http-trace.
type traceTransport struct {
	next http.RoundTripper
	out  *lineWriter
	now  func() time.Time
}

func (t *traceTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	now := t.now
	if now == nil {
		now = time.Now
	}
	start := now()
	name := req.Method + " " + req.URL.String()
	line := func(format string, args ...any) {
		t.out.printf("http-trace: %s: %s (+%s)\n", name, fmt.Sprintf(format, args...), now().Sub(start).Round(time.Microsecond))
	}
	trace := &httptrace.ClientTrace{
		DNSStart: func(i httptrace.DNSStartInfo) { line("DNS lookup of %s", i.Host) },
		DNSDone: func(i httptrace.DNSDoneInfo) {
			if i.Err != nil {
				line("DNS lookup failed: %v", i.Err)
				return
			}
			line("DNS lookup done: %v", i.Addrs)
		},
		ConnectStart: func(network, addr string) { line("connecting to %s %s", network, addr) },
		ConnectDone: func(network, addr string, err error) {
			if err != nil {
				line("connect to %s %s failed: %v", network, addr, err)
				return
			}
			line("connected to %s %s", network, addr)
		},
		TLSHandshakeDone: func(s tls.ConnectionState, err error) {
			if err != nil {
				line("TLS handshake failed: %v", err)
				return
			}
			line("TLS handshake done: %s, server name %q", tls.VersionName(s.Version), s.ServerName)
		},
		GotConn: func(i httptrace.GotConnInfo) {
			line("got connection to %s (reused: %t, idle: %t)", i.Conn.RemoteAddr(), i.Reused, i.WasIdle)
		},
		WroteRequest: func(i httptrace.WroteRequestInfo) {
			if i.Err != nil {
				line("write request failed: %v", i.Err)
				return
			}
			line("request written")
		},
		GotFirstResponseByte: func() { line("first response byte") },
	}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		line("failed: %v", err)
		return nil, err
	}
	line("response %s", resp.Status)
	return resp, nil
}

// debugLineTransport prints one line per request and response on stdout
// with --debug, as the reference's push does.
type debugLineTransport struct {
	next http.RoundTripper
	out  *lineWriter
}

func (t *debugLineTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.out.printf("http req %s %s\n", req.Method, req.URL)
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		t.out.printf("http err %v\n", err)
		return nil, err
	}
	t.out.printf("http res %s\n", resp.Status)
	return resp, nil
}
