package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string // substrings of the error message
	}{
		// Wrong types.
		{"string for integer", "\n\nmount_timeout_sec = \"30\"\n", []string{"line 3", "mount_timeout_sec", "want an integer"}},
		{"bool for integer", "[http]\nMaxRetries = true\n", []string{"line 2", "http.MaxRetries", "want an integer"}},
		{"integer for string", "[background_fetch]\ndrop_policy = 1\n", []string{"background_fetch.drop_policy", "want a string"}},
		{"integer for table", "blob = 3\n", []string{"line 1", "blob", "want a table"}},
		{"string for bool", "[pull_modes.soci_v2]\nenable = 'yes'\n", []string{"pull_modes.soci_v2.enable", "want a boolean"}},
		{"overflow", "[fuse]\nattr_timeout = 99999999999999999999\n", []string{"line 2", "fuse.attr_timeout"}},
		{"syntax", "a = = 1\n", []string{"line 1", "invalid TOML"}},
		// Invalid values.
		{"drop policy", "[background_fetch]\ndrop_policy = 'middle'\n", []string{"line 2", "background_fetch.drop_policy", `"middle"`}},
		// Upstream's net.Listen fails on these; without an address it never listens.
		{"metrics network", "metrics_address = 'localhost:0'\nmetrics_network = 'udp'\n", []string{"line 2", "metrics_network", `"udp"`}},
		{"metrics network ip", "metrics_address = '127.0.0.1:0'\nmetrics_network = 'ip4'\n", []string{"line 2", "metrics_network"}},
		// Upstream fails every connection, or panics making a ticker.
		{"negative dial timeout", "[http]\nDialTimeoutMsec = -1\n", []string{"line 2", "http.DialTimeoutMsec", "positive"}},
		{"negative emit period", "[background_fetch]\nemit_metric_period_sec = -1\n", []string{"line 2", "background_fetch.emit_metric_period_sec"}},
		{"huge negative header timeout", "[http]\nResponseHeaderTimeoutMsec = -9223372036854775807\n", []string{"http.ResponseHeaderTimeoutMsec", "out of range"}},
		{"content store", "[content_store]\ntype = 'local'\n", []string{"line 2", "content_store.type"}},
		{"metadata store", "metadata_store = 'memory'\n", []string{"metadata_store"}},
		{"negative mount timeout", "mount_timeout_sec = -1\n", []string{"line 1", "mount_timeout_sec", "positive"}},
		{"negative http timeout", "[http]\nDialTimeoutMsec = -1\n", []string{"line 2", "http.DialTimeoutMsec"}},
		{"duration overflow", "mount_timeout_sec = 9223372036854775807\n", []string{"mount_timeout_sec", "out of range"}},
		{"negative cache bound", "[directory_cache]\nmax_bytes = '-1gb'\n", []string{"directory_cache.max_bytes"}},
		{"bad chunk size", "[pull_modes.parallel_pull_unpack]\nconcurrent_download_chunk_size = '8xb'\n",
			[]string{"line 2", "pull_modes.parallel_pull_unpack.concurrent_download_chunk_size", `"8xb"`}},
		{"negative chunk size", "[pull_modes.parallel_pull_unpack]\nconcurrent_download_chunk_size = '-8mb'\n",
			[]string{"pull_modes.parallel_pull_unpack.concurrent_download_chunk_size"}},
		{"per-image above global", "[pull_modes.parallel_pull_unpack]\nenable = true\nmax_concurrent_downloads = 2\nmax_concurrent_downloads_per_image = 3\n",
			[]string{"line 4", "pull_modes.parallel_pull_unpack.max_concurrent_downloads_per_image"}},
		{"relative decompressor", "[pull_modes.parallel_pull_unpack.decompress_streams.gzip]\npath = 'unpigz'\n",
			[]string{"line 2", "pull_modes.parallel_pull_unpack.decompress_streams.gzip.path", "absolute"}},
		{"empty mirror host", "[[resolver.host.'docker.io'.mirrors]]\ninsecure = true\n[[resolver.host.'docker.io'.mirrors]]\nhost = ''\n",
			[]string{"line 1: resolver.host.\"docker.io\".mirrors[0].host", "line 4: resolver.host.\"docker.io\".mirrors[1].host"}},
		{"relative hosts dir", "[resolver]\nconfig_path = '/etc/containerd/certs.d:certs.d'\n",
			[]string{"line 2", "resolver.config_path", "absolute"}},
		{"empty hosts dir in list", "[resolver]\nconfig_path = '/a::/b'\n", []string{"line 2", "resolver.config_path"}},
		{"all problems reported", "mount_timeout_sec = -1\nmetadata_store = 'bolt'\n", []string{"line 1: mount_timeout_sec", "line 2: metadata_store"}},
		{"error despite unknown keys", "foo = 1\nmetadata_store = 'bolt'\n", []string{"line 2: metadata_store"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.doc))
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error", tc.doc, cfg)
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestValidateUnnormalized(t *testing.T) {
	err := (&Config{}).Validate()
	if err == nil {
		t.Fatal("Validate of a zero Config succeeded")
	}
	for _, key := range []string{"mount_timeout_sec", "http.DialTimeoutMsec", "content_store.type", "background_fetch.max_queue_size"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error %q does not name %s", err, key)
		}
	}
}

func TestParseAcceptsValues(t *testing.T) {
	docs := []string{
		"metrics_network = 'unix'\nmetrics_address = '/run/m.sock'\n",
		"metadata_store = 'db-multi'\n",
		"filesystem_cache_type = 'memory'\n",
		"[http]\nMaxRetries = -1\n",
		// Upstream matches keys case-insensitively; so do we.
		"[http]\ndialtimeoutmsec = 10\n",
		// A disabled parallel pull is not checked for consistent limits.
		"[pull_modes.parallel_pull_unpack]\nmax_concurrent_downloads = 2\nmax_concurrent_downloads_per_image = 3\n",
		"[pull_modes.parallel_pull_unpack]\nenable = true\nmax_concurrent_downloads = 0\nmax_concurrent_downloads_per_image = 30\n",
		"[pull_modes.parallel_pull_unpack]\nconcurrent_download_chunk_size = 8388608\n",
	}
	for _, doc := range docs {
		if _, err := Parse([]byte(doc)); err != nil {
			t.Errorf("Parse(%q): %v", doc, err)
		}
	}
}

func TestNormalization(t *testing.T) {
	tests := []struct {
		doc   string
		check func(c *Config) bool
	}{
		{"mount_timeout_sec = 0", func(c *Config) bool { return c.MountTimeoutSec == 30 }},
		{"fuse_metrics_emit_wait_duration_sec = 0", func(c *Config) bool { return c.FuseMetricsEmitWaitDurationSec == 60 }},
		{"max_concurrency = 0", func(c *Config) bool { return c.MaxConcurrency == 100 }},
		{"max_concurrency = -5", func(c *Config) bool { return c.MaxConcurrency == 0 }},
		{"max_concurrency = 7", func(c *Config) bool { return c.MaxConcurrency == 7 }},
		{"metrics_network = ''", func(c *Config) bool { return c.MetricsNetwork == NetworkTCP }},
		{"metadata_store = ''", func(c *Config) bool { return c.MetadataStore == MetadataStoreDB }},
		{"[prefetch]\nmax_concurrency = -1", func(c *Config) bool { return c.Prefetch.MaxConcurrency == 0 }},
		{"[http]\nDialTimeoutMsec = 0\nMaxRetries = 0\nMaxWaitMsec = 0", func(c *Config) bool {
			return c.HTTP.DialTimeoutMsec == 3000 && c.HTTP.MaxRetries == 8 && c.HTTP.MaxWaitMsec == 300000
		}},
		{"[http]\nMaxRetries = 3\nMinWaitMsec = 5\n[blob]\nmax_retries = 0\nmin_wait_msec = 0", func(c *Config) bool {
			return c.Blob.MaxRetries == 3 && c.Blob.MinWaitMsec == 5
		}},
		// As upstream: an absent blob key keeps its default rather than inheriting.
		{"[http]\nMaxRetries = 3", func(c *Config) bool { return c.Blob.MaxRetries == 8 }},
		{"[blob]\nvalid_interval = 0", func(c *Config) bool { return c.Blob.ValidIntervalSec == 60 }},
		{"[blob]\nvalid_interval = 10\ncheck_always = true", func(c *Config) bool { return c.Blob.ValidIntervalSec == 0 }},
		{"[blob]\nfetching_timeout_sec = 0", func(c *Config) bool { return c.Blob.FetchTimeoutSec == 300 }},
		{"[fuse]\nattr_timeout = 0\nentry_timeout = 0\nnegative_timeout = 0", func(c *Config) bool {
			return c.Fuse.AttrTimeoutSec == 86400 && c.Fuse.EntryTimeoutSec == 86400 && c.Fuse.NegativeTimeoutSec == 86400
		}},
		{"[background_fetch]\nsilence_period_msec = 0\nfetch_period_msec = 0\nmax_queue_size = 0\ndrop_policy = ''\nemit_metric_period_sec = 0",
			func(c *Config) bool { return reflect.DeepEqual(c.BackgroundFetch, Default().BackgroundFetch) }},
		{"[content_store]\ntype = ''\ncontainerd_address = ''\nnamespace = ''",
			func(c *Config) bool { return reflect.DeepEqual(c.ContentStore, Default().ContentStore) }},
		{"[content_store]\ncontainerd_address = 'unix:///run/k3s/containerd.sock'",
			func(c *Config) bool { return c.ContentStore.ContainerdAddress == "/run/k3s/containerd.sock" }},
		{"[cri_keychain]\nimage_service_path = ''", func(c *Config) bool { return c.CRIKeychain.ImageServicePath == DefaultContainerdAddress }},
		{"[resolver]\nauth_client_ttl_sec = 0", func(c *Config) bool { return c.Resolver.AuthClientTTLSec == 3600 }},
		{"[resolver.host]", func(c *Config) bool { return c.Resolver.Host == nil }},
		{"[resolver]\nauth_client_ttl_sec = 60", func(c *Config) bool {
			return slices.Equal(c.Resolver.HostsDirs(), []string{DefaultHostsDir})
		}},
		{"[resolver]\nconfig_path = '/run/certs.d:/etc/containerd/certs.d'", func(c *Config) bool {
			return slices.Equal(c.Resolver.HostsDirs(), []string{"/run/certs.d", "/etc/containerd/certs.d"})
		}},
		// As containerd's config_path: empty reads no hosts directory.
		{"[resolver]\nconfig_path = ''", func(c *Config) bool { return c.Resolver.HostsDirs() == nil }},
		{"[pull_modes.parallel_pull_unpack]\nconcurrent_download_chunk_size = '0'",
			func(c *Config) bool { return c.PullModes.Parallel.ConcurrentDownloadChunkSize == Unbounded }},
		{"[pull_modes.parallel_pull_unpack]\nconcurrent_download_chunk_size = '16MB'",
			func(c *Config) bool { return c.PullModes.Parallel.ConcurrentDownloadChunkSize == 16<<20 }},
		{"[directory_cache]\nmax_bytes = '10gb'", func(c *Config) bool { return c.DirectoryCache.MaxBytes == 10<<30 }},
		{"[directory_cache]\nmax_bytes = ''", func(c *Config) bool { return c.DirectoryCache.MaxBytes == Unbounded }},
	}
	for _, tc := range tests {
		cfg, err := Parse([]byte(tc.doc + "\n"))
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.doc, err)
			continue
		}
		if !tc.check(cfg) {
			t.Errorf("Parse(%q) = %+v: not normalized as expected", tc.doc, cfg)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.toml")

	cfg, err := Load(missing, false)
	if err != nil || !reflect.DeepEqual(cfg, Default()) {
		t.Errorf("Load(missing, not explicit) = %+v, %v; want Default(), nil", cfg, err)
	}
	if _, err := Load(missing, true); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(missing, explicit) error = %v, want not-exist naming the path", err)
	}
	if _, err := Load(dir, false); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("Load(directory) error = %v, want an error naming the path", err)
	}

	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte("[snapshotter]\nmin_layer_size = 10000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err = Load(good, true)
	if err != nil || cfg.Snapshotter.MinLayerSize != 10000000 {
		t.Errorf("Load(good) = %+v, %v", cfg, err)
	}

	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("\nmetadata_store = 'udp'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad, false)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "line 2: metadata_store") {
		t.Errorf("Load(bad) error = %v, want path, line and key", err)
	}
}

// TestSilencePeriodHonoured: silence_period_msec set alone is the delay;
// with background_max_delay_msec set too, that caps it; unset, the walk
// starts at the mount.
func TestSilencePeriodHonoured(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want time.Duration
	}{
		{"", 0},
		{"[background_fetch]\nsilence_period_msec = 7000\n", 7 * time.Second},
		{"[background_fetch]\nsilence_period_msec = 7000\n[limits]\nbackground_max_delay_msec = 2000\n", 2 * time.Second},
		{"[limits]\nbackground_max_delay_msec = 2000\n", 2 * time.Second},
	} {
		cfg, _, err := Read([]byte(tc.doc))
		if err != nil {
			t.Fatalf("%q: %v", tc.doc, err)
		}
		got := min(cfg.BackgroundFetch.SilencePeriodMsec.Duration(), cfg.Limits.BackgroundMaxDelayMsec.Duration())
		if got != tc.want {
			t.Errorf("%q: walk delay %v, want %v", tc.doc, got, tc.want)
		}
	}
}
