package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	dockerconfig "github.com/docker/cli/cli/config"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
)

func TestTLSFilesConfig(t *testing.T) {
	pki, err := harness.NewTestPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err := (tlsFiles{}).config(false); cfg != nil || err != nil {
		t.Errorf("no flags: got %v %v, want nil (containerd's defaults)", cfg, err)
	}
	if cfg, err := (tlsFiles{}).config(true); err != nil || cfg == nil || !cfg.InsecureSkipVerify {
		t.Errorf("--skip-verify: got %+v %v", cfg, err)
	}
	cfg, err := tlsFiles{ca: pki.CA, cert: pki.ClientCert, key: pki.ClientKey}.config(false)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RootCAs == nil || len(cfg.Certificates) != 1 || cfg.InsecureSkipVerify {
		t.Errorf("all three files: %+v", cfg)
	}
	bad := filepath.Join(t.TempDir(), "bad.pem")
	os.WriteFile(bad, []byte("not a certificate"), 0o600)
	for name, f := range map[string]tlsFiles{
		"cert without key": {cert: pki.ClientCert},
		"key without cert": {key: pki.ClientKey},
		"CA not PEM":       {ca: bad},
		"CA missing":       {ca: filepath.Join(t.TempDir(), "none.pem")},
		"key mismatch":     {cert: pki.ClientCert, key: pki.ServerKey},
	} {
		if _, err := f.config(false); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// mtlsServer is an HTTPS registry stub that requires a client certificate
// from the PKI's CA; every blob is absent.
func mtlsServer(t *testing.T, pki *harness.TestPKI) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.NotFound(w, r)
	}))
	caPEM, _ := os.ReadFile(pki.CA)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	pair, err := tls.LoadX509KeyPair(pki.ServerCert, pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

var someBlob = ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromString("x"), Size: 1}

// TestRepositoryTLS: the TLS flags reach the registry connection: with CA
// and client certificate the request goes through; without the CA the
// server is not trusted; without the client certificate the server refuses.
func TestRepositoryTLS(t *testing.T) {
	pki, err := harness.NewTestPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(mtlsServer(t, pki).URL, "https://")
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		files tlsFiles
		ok    bool
	}{
		{"ca and client cert", tlsFiles{ca: pki.CA, cert: pki.ClientCert, key: pki.ClientKey}, true},
		{"no ca", tlsFiles{cert: pki.ClientCert, key: pki.ClientKey}, false},
		{"no client cert", tlsFiles{ca: pki.CA}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			repo, err := repository(ctx, registryOptions{tls: tc.files, stderr: &stderr, stdout: &stderr}, host+"/test/repo")
			if err != nil {
				t.Fatal(err)
			}
			_, err = repo.Blobs().Exists(ctx, someBlob)
			if tc.ok != (err == nil) {
				t.Errorf("Exists: err %v, want ok=%v", err, tc.ok)
			}
			if repo.PlainHTTP {
				t.Error("TLS registry spoken to over plain HTTP")
			}
		})
	}
}

// tokenRegistry asks for a bearer token from its own /token endpoint,
// which grants one only for the refresh token "rt-123".
type tokenRegistry struct {
	mu      sync.Mutex
	granted int
	url     string
}

func (s *tokenRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		r.ParseForm()
		if r.Method != http.MethodPost || r.Form.Get("grant_type") != "refresh_token" || r.Form.Get("refresh_token") != "rt-123" {
			http.Error(w, "bad grant", http.StatusUnauthorized)
			return
		}
		s.mu.Lock()
		s.granted++
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"access-456","expires_in":300}`))
		return
	}
	if r.Header.Get("Authorization") != "Bearer access-456" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+s.url+`/token",service="test",scope="repository:test/repo:pull"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	http.NotFound(w, r)
}

// TestRepositoryRefreshAndDump: --refresh is exchanged at the token
// server; --http-dump shows the exchange on stderr with the credentials
// redacted; --http-trace reports the connection; stdout stays clean.
func TestRepositoryRefreshAndDump(t *testing.T) {
	reg := &tokenRegistry{}
	srv := httptest.NewServer(reg)
	defer srv.Close()
	reg.url = srv.URL
	host := strings.TrimPrefix(srv.URL, "http://")
	var stdout, stderr bytes.Buffer
	o := registryOptions{plainHTTP: true, refresh: "rt-123", dump: true, trace: true, stdout: &stdout, stderr: &stderr}
	repo, err := repository(context.Background(), o, host+"/test/repo")
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := repo.Blobs().Exists(context.Background(), someBlob); err != nil || ok {
		t.Fatalf("Exists with --refresh: %v %v", ok, err)
	}
	if reg.granted != 1 {
		t.Errorf("token server granted %d tokens, want 1", reg.granted)
	}
	dump := stderr.String()
	for _, want := range []string{"> HEAD " + srv.URL + "/v2/test/repo/blobs/" + someBlob.Digest.String(), "< HTTP/1.1 401 Unauthorized",
		"> POST " + srv.URL + "/token", "> Authorization: <redacted>", "< HTTP/1.1 404 Not Found", "http-trace: HEAD", "connected to tcp"} {
		if !strings.Contains(dump, want) {
			t.Errorf("stderr lacks %q:\n%s", want, dump)
		}
	}
	if strings.Contains(dump, "access-456") {
		t.Errorf("the access token leaked into the dump:\n%s", dump)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout got %q", stdout.String())
	}

	// A wrong refresh token is refused.
	o.refresh, o.dump, o.trace = "wrong", false, false
	repo, _ = repository(context.Background(), o, host+"/test/repo")
	if _, err := repo.Blobs().Exists(context.Background(), someBlob); err == nil {
		t.Error("wrong refresh token: no error")
	}
}

func TestCredentialsOrder(t *testing.T) {
	dir := t.TempDir()
	prev := dockerconfig.Dir()
	dockerconfig.SetDir(dir)
	defer dockerconfig.SetDir(prev)
	if c := credentials(registryOptions{user: "u:p", refresh: "rt"}, "h"); c.Username != "u" || c.Password != "p" || c.RefreshToken != "" {
		t.Errorf("--user wins: %+v", c)
	}
	if c := credentials(registryOptions{refresh: "rt"}, "h"); c.RefreshToken != "rt" || c.Username != "" {
		t.Errorf("--refresh: %+v", c)
	}
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"auths":{"reg.example":{"identitytoken":"id-tok"},"other.example":{"auth":"YWxpY2U6c2VjcmV0"}}}`), 0o600)
	if c := credentials(registryOptions{}, "reg.example"); c.RefreshToken != "id-tok" {
		t.Errorf("docker config identity token: %+v", c)
	}
	if c := credentials(registryOptions{}, "other.example"); c.Username != "alice" || c.Password != "secret" {
		t.Errorf("docker config basic auth: %+v", c)
	}
}

func TestUploadConcurrency(t *testing.T) {
	for _, tc := range []struct {
		in   uint64
		want int
		ok   bool
	}{{0, 3, true}, {1, 1, true}, {7, 7, true}, {1 << 63, 3, false}} {
		if n, ok := uploadConcurrency(tc.in); n != tc.want || ok != tc.ok {
			t.Errorf("uploadConcurrency(%d) = %d, %v; want %d, %v", tc.in, n, ok, tc.want, tc.ok)
		}
	}
}

func TestPushFlagDefaults(t *testing.T) {
	cmd := pushCommand()
	want := map[string]string{maxConcurrentUploadsFlag: "3", existingIndexFlag: "warn"}
	for _, f := range cmd.Flags {
		for _, name := range f.Names() {
			if w, ok := want[name]; ok {
				if got := strings.TrimSpace(strings.Split(strings.Split(f.String(), "(default: ")[1], ")")[0]); strings.Trim(got, `"`) != w {
					t.Errorf("--%s default %q, want %s", name, got, w)
				}
				delete(want, name)
			}
		}
	}
	for name := range want {
		t.Errorf("push has no --%s", name)
	}
	names := map[string]bool{}
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			names[n] = true
		}
	}
	for _, n := range []string{"tlscacert", "tlscert", "tlskey", "refresh", "http-dump", "http-trace", "hosts-dir", "plain-http", "skip-verify", "k", "user", "u", "snapshotter", "quiet", "q", "platform", "p", "all-platforms"} {
		if !names[n] {
			t.Errorf("push lacks the reference's flag --%s", n)
		}
	}
}
