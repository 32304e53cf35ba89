package config

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/default.toml from Encode(Default()) and the key table of docs/migration.md")

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func mustParse(t *testing.T, data []byte) *Config {
	t.Helper()
	cfg, err := Parse(data)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return cfg
}

func encode(t *testing.T, c *Config) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := c.Encode(&buf); err != nil {
		t.Fatalf("Encode: %v", err)
	}
	return buf.Bytes()
}

// assertRoundTrip checks that Encode(c) parses back to c.
func assertRoundTrip(t *testing.T, c *Config) {
	t.Helper()
	data := encode(t, c)
	got, err := Parse(data)
	if err != nil {
		t.Fatalf("Parse(Encode(c)): %v\n%s", err, data)
	}
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("Parse(Encode(c)) differs from c:\n got %+v\nwant %+v\n%s", got, c, data)
	}
}

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestEmptyDocumentIsDefault(t *testing.T) {
	for _, doc := range []string{"", "# only a comment\n", "\n\n"} {
		if got := mustParse(t, []byte(doc)); !reflect.DeepEqual(got, Default()) {
			t.Errorf("Parse(%q) = %+v, want Default()", doc, got)
		}
	}
}

func TestDefaultGolden(t *testing.T) {
	got := encode(t, Default())
	golden := filepath.Join("testdata", "default.toml")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := readTestdata(t, "default.toml")
	if !bytes.Equal(got, want) {
		t.Fatalf("Encode(Default()) differs from %s (run go test -update to accept):\n%s", golden, got)
	}
	assertRoundTrip(t, Default())
}

func TestSampleGolden(t *testing.T) {
	cfg := mustParse(t, readTestdata(t, "sample.toml"))

	mirrors := cfg.Resolver.Host["registry.example.com"].Mirrors
	wantMirrors := []MirrorConfig{{Host: "mirror.example.com", RequestTimeoutSec: 30}}
	if !reflect.DeepEqual(mirrors, wantMirrors) {
		t.Errorf("mirrors = %+v, want %+v", mirrors, wantMirrors)
	}
	gzip := cfg.PullModes.Parallel.DecompressStreams["gzip"]
	if want := (DecompressStream{Path: "/usr/bin/unpigz", Args: []string{"-d", "-c"}}); !reflect.DeepEqual(gzip, want) {
		t.Errorf("gzip stream = %+v, want %+v", gzip, want)
	}
	if cfg.HTTP.DialTimeoutMsec != 3000 || cfg.BackgroundFetch.DropPolicy != DropNewest ||
		!cfg.PullModes.SOCIv2.Enable || cfg.ContentStore.Namespace != "default" {
		t.Errorf("unexpected values in %+v", cfg)
	}
	assertRoundTrip(t, cfg)

	// Apart from the two example tables, the sample documents the defaults.
	cfg.Resolver.Host = nil
	cfg.PullModes.Parallel.DecompressStreams = nil
	if !reflect.DeepEqual(cfg, Default()) {
		t.Errorf("sample without examples = %+v\nwant Default() = %+v", cfg, Default())
	}
}

// TestSampleListsEveryKey keeps the documented sample complete: every key
// Encode writes must appear in it.
func TestSampleListsEveryKey(t *testing.T) {
	sample := keyLines(readTestdata(t, "sample.toml"))
	for key := range keyLines(encode(t, Default())) {
		if _, ok := sample[key]; !ok {
			t.Errorf("testdata/sample.toml does not document %s", key)
		}
	}
	for _, key := range []string{
		`resolver.host."registry.example.com".mirrors[0].host`,
		`resolver.host."registry.example.com".mirrors[0].insecure`,
		`resolver.host."registry.example.com".mirrors[0].request_timeout_sec`,
		"pull_modes.parallel_pull_unpack.decompress_streams.gzip.path",
		"pull_modes.parallel_pull_unpack.decompress_streams.gzip.args",
	} {
		if _, ok := sample[key]; !ok {
			t.Errorf("testdata/sample.toml does not document %s", key)
		}
	}
}

func TestEncodeRoundTripsNonDefaults(t *testing.T) {
	docs := []string{
		"max_concurrency = -1\n",
		"[blob]\ncheck_always = true\n",
		"[pull_modes.parallel_pull_unpack]\nconcurrent_download_chunk_size = '1.5mb'\n",
		"[pull_modes.parallel_pull_unpack]\nconcurrent_download_chunk_size = '1000'\n",
		"[content_store]\ntype = 'containerd'\ncontainerd_address = 'unix:///x.sock'\nnamespace = 'k8s.io'\n",
		"[resolver]\nauth_client_ttl_sec = -1\n[[resolver.host.'a.io'.mirrors]]\nhost = 'b'\nrequest_timeout_sec = -1\n",
		"[resolver.host.'a.io']\n",
		"[background_fetch]\nmax_queue_size = -1\ndrop_policy = 'oldest'\n",
		"[pull_modes.parallel_pull_unpack.decompress_streams.zstd]\npath = '/usr/bin/zstd'\n",
	}
	for _, doc := range docs {
		t.Run(doc, func(t *testing.T) {
			assertRoundTrip(t, mustParse(t, []byte(doc)))
		})
	}
}

func TestEncodeDoesNotModifyConfig(t *testing.T) {
	cfg := mustParse(t, []byte("max_concurrency = -1\n"))
	encode(t, cfg)
	if cfg.MaxConcurrency != 0 {
		t.Fatalf("MaxConcurrency = %d after Encode, want 0", cfg.MaxConcurrency)
	}
}

func TestMirrors(t *testing.T) {
	cfg := mustParse(t, []byte(`
[resolver.host."docker.io"]
  [[resolver.host."docker.io".mirrors]]
    host = "mirror-a.example.com"
    insecure = true
  [[resolver.host."docker.io".mirrors]]
    host = "https://mirror-b.example.com/v2"
    request_timeout_sec = -1

[resolver.host."quay.io"]
  mirrors = [{ host = "localhost:5000", request_timeout_sec = 10 }]
`))
	want := map[string]HostConfig{
		"docker.io": {Mirrors: []MirrorConfig{
			{Host: "mirror-a.example.com", Insecure: true},
			{Host: "https://mirror-b.example.com/v2", RequestTimeoutSec: -1},
		}},
		"quay.io": {Mirrors: []MirrorConfig{{Host: "localhost:5000", RequestTimeoutSec: 10}}},
	}
	if !reflect.DeepEqual(cfg.Resolver.Host, want) {
		t.Fatalf("Host = %+v, want %+v", cfg.Resolver.Host, want)
	}
	assertRoundTrip(t, cfg)
}

func TestDurations(t *testing.T) {
	cfg := Default()
	if got := cfg.MountTimeoutSec.Duration().String(); got != "30s" {
		t.Errorf("mount timeout = %s, want 30s", got)
	}
	if got := cfg.HTTP.DialTimeoutMsec.Duration().String(); got != "3s" {
		t.Errorf("dial timeout = %s, want 3s", got)
	}
}
