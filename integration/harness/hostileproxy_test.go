package harness

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHostileProxy: each kind of hostility answers a range read of the
// target blob as documented, other requests pass through unchanged, and the
// redirect's blob store serves the right bytes and records headers.
func TestHostileProxy(t *testing.T) {
	blob := make([]byte, 256<<10)
	rand.New(rand.NewSource(1)).Read(blob)
	sum := sha256.Sum256(blob)
	hexd := hex.EncodeToString(sum[:])
	dgst := "sha256:" + hexd
	storage := t.TempDir()
	dir := filepath.Join(storage, "docker/registry/v2/blobs/sha256", hexd[:2], hexd)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/r/blobs/"+dgst {
			_, _ = io.WriteString(w, "other:"+r.URL.Path)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	defer upstream.Close()
	p, err := StartHostileProxy(upstream.Listener.Addr().String(), storage, "127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	const first, last = 1000, 50999 // 50000 bytes
	asked := blob[first : last+1]
	get := func(path string, rng string) (*http.Response, []byte, error) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+p.Host+path, nil)
		req.Header.Set("Authorization", "Basic c2VjcmV0")
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, b, err
	}
	rng := fmt.Sprintf("bytes=%d-%d", first, last)
	path := "/v2/r/blobs/" + dgst
	total := fmt.Sprintf("/%d", len(blob))

	cases := []struct {
		mode   Hostility
		status int
		cr     string // Content-Range
		body   []byte
		err    bool // the body ends in an error
	}{
		{Honest, 206, fmt.Sprintf("bytes %d-%d", first, last) + total, asked, false},
		{WholeBlob, 200, "", blob, false},
		{ShiftedRange, 206, fmt.Sprintf("bytes %d-%d", first+ShiftBytes, last+ShiftBytes) + total, blob[first+ShiftBytes : last+ShiftBytes+1], false},
		{ShortRange, 206, fmt.Sprintf("bytes %d-%d", first, first+24999) + total, blob[first : first+25000], false},
		{GarbageRange, 206, fmt.Sprintf("bytes %d-x%d/y", first, last), asked, false},
		{WrongTotal, 206, fmt.Sprintf("bytes %d-%d/%d", first, last, len(blob)+12345), asked, false},
		{TruncatedBody, 206, fmt.Sprintf("bytes %d-%d", first, last) + total, asked[:25000], true},
		{LongBody, 206, fmt.Sprintf("bytes %d-%d", first, last) + total, append(append([]byte{}, asked...), bytes.Repeat([]byte{0xa5}, LongBodyExtra)...), false},
		{Redirect, 206, fmt.Sprintf("bytes %d-%d", first, last) + total, asked, false}, // followed by the client
	}
	for _, c := range cases {
		p.Set(dgst, c.mode)
		resp, body, err := get(path, rng)
		if resp == nil {
			t.Fatalf("%s: %v", c.mode, err)
		}
		if c.err {
			if err == nil {
				t.Errorf("%s: body read without error", c.mode)
			}
		} else if err != nil {
			t.Fatalf("%s: %v", c.mode, err)
		}
		if resp.StatusCode != c.status || resp.Header.Get("Content-Range") != c.cr {
			t.Errorf("%s: %d %q, want %d %q", c.mode, resp.StatusCode, resp.Header.Get("Content-Range"), c.status, c.cr)
		}
		if !bytes.Equal(body, c.body) {
			t.Errorf("%s: body of %d bytes differs from the %d expected", c.mode, len(body), len(c.body))
		}
		if c.mode != Honest && p.Served(c.mode) != 1 {
			t.Errorf("%s: Served = %d, want 1", c.mode, p.Served(c.mode))
		}
	}

	p.Set(dgst, CorruptBytes)
	resp, body, err := get(path, rng)
	if err != nil || resp.StatusCode != 206 || len(body) != len(asked) || bytes.Equal(body, asked) {
		t.Errorf("corrupt bytes: status %v, %d bytes (equal to the blob's: %v), err %v", resp.StatusCode, len(body), bytes.Equal(body, asked), err)
	}
	p.Set(dgst, RedirectChallenge)
	if resp, _, err := get(path, rng); err != nil || resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("redirect to a challenge: %v, %v", resp, err)
	}
	// Other requests of the target, and requests of other paths, pass.
	if _, body, err := get(path, ""); err != nil || !bytes.Equal(body, blob) {
		t.Errorf("whole-blob GET through a hostile proxy: %d bytes, %v", len(body), err)
	}
	if _, body, err := get("/v2/r/manifests/latest", rng); err != nil || string(body) != "other:/v2/r/manifests/latest" {
		t.Errorf("manifest GET through a hostile proxy: %q, %v", body, err)
	}
	// The redirect target is another host; it got the redirect's request
	// (Go's client drops Authorization on a redirect to another host).
	reqs := p.StoreRequests()
	if len(reqs) != 2 || reqs[0].Get("Range") != rng || reqs[0].Get("Authorization") != "" || reqs[1].Get("Authorization") != "" {
		t.Errorf("blob store requests: %v", reqs)
	}
	if !strings.HasPrefix(p.StoreHost(), "127.0.0.2:") {
		t.Errorf("blob store on %s, want 127.0.0.2", p.StoreHost())
	}
}
