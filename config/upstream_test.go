package config

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

func mustRead(t *testing.T, doc string) (*Config, []Notice) {
	t.Helper()
	cfg, notices, err := Read([]byte(doc))
	if err != nil {
		t.Fatalf("Read(%q): %v", doc, err)
	}
	return cfg, notices
}

func noticeKeys(notices []Notice, kind NoticeKind) []string {
	var keys []string
	for _, n := range notices {
		if n.Kind == kind {
			keys = append(keys, n.Key)
		}
	}
	return keys
}

// TestUpstreamFiles loads configurations written for upstream, using every
// key, value form and layout of its sample file and docs, and checks that
// each value means what upstream makes it mean.
func TestUpstreamFiles(t *testing.T) {
	full, notices := mustRead(t, string(readTestdata(t, "upstream/full.toml")))
	if unknown := noticeKeys(notices, UnknownKey); len(unknown) > 0 {
		t.Errorf("full.toml: unknown keys %v", unknown)
	}
	checks := []struct {
		name string
		ok   bool
	}{
		{"resolve_result_entry", full.ResolveResultEntry == 40},
		{"filesystem_cache_type directory", full.FSCacheType == CacheTypeDirectory},
		{"max_concurrency -1 is unlimited", full.MaxConcurrency == 0},
		{"mount_timeout_sec", full.MountTimeoutSec == 45},
		{"metrics", full.MetricsAddress == "localhost:8000" && full.MetricsNetwork == "tcp4"},
		{"debug_address", full.DebugAddress == "localhost:6060"},
		{"http", full.HTTP == HTTPConfig{DialTimeoutMsec: 2000, ResponseHeaderTimeoutMsec: -1,
			RequestTimeoutMsec: 120000, MaxRetries: 5, MinWaitMsec: 50, MaxWaitMsec: 60000}},
		// 0 inherits [http]; a shortest wait above the longest waits the longest.
		{"blob", full.Blob == BlobConfig{ValidIntervalSec: 120, FetchTimeoutSec: 200, MaxRetries: 5,
			MinWaitMsec: 20, MaxWaitMsec: 20, ForceSingleRangeMode: true}},
		{"fuse", full.Fuse == FuseConfig{AttrTimeoutSec: 5, EntryTimeoutSec: 5, NegativeTimeoutSec: -1, PassthroughMaxBytes: defaultPassthroughMaxBytes}},
		{"background_fetch", full.BackgroundFetch == BackgroundFetchConfig{SilencePeriodMsec: -1, FetchPeriodMsec: 250,
			MaxQueueSize: -1, DropPolicy: DropOldest, EmitMetricPeriodSec: 20}},
		{"content_store unix:// trimmed", full.ContentStore.ContainerdAddress == "/run/containerd/containerd.sock"},
		{"prefetch -1 is no limit", full.Prefetch.MaxConcurrency == 0},
		{"pull modes", full.PullModes.SOCIv1.Enable && full.PullModes.SOCIv2.Enable && !full.PullModes.Parallel.Enable},
		{"kubeconfig", full.KubeconfigKeychain == KubeconfigKeychainConfig{KubeconfigPath: "/path/to/kubeconfig"}},
		{"cri", full.CRIKeychain.EnableKeychain && full.CRIKeychain.ImageServicePath == DefaultContainerdAddress},
		{"resolver", full.Resolver.AuthClientTTLSec == -1 && full.Resolver.EnableAuthClientSharing},
		{"mirrors", reflect.DeepEqual(full.Resolver.Host["examplehost"].Mirrors,
			[]MirrorConfig{{Host: "mirror.example.com", Insecure: true, RequestTimeoutSec: 10}})},
		{"min_layer_size -1 is unset", full.Snapshotter.MinLayerSize == 0},
		{"allow_invalid_mounts_on_restart", full.Snapshotter.AllowInvalidMountsOnRestart},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("full.toml: %s not read as upstream reads it: %+v", c.name, full)
		}
	}
	assertRoundTrip(t, full)

	parallel, notices := mustRead(t, string(readTestdata(t, "upstream/parallel.toml")))
	p := parallel.PullModes.Parallel
	if !p.Enable || p.MaxConcurrentDownloads != 50 || p.MaxConcurrentDownloadsPerImage != 10 ||
		p.ConcurrentDownloadChunkSize != 8<<20 || p.MaxConcurrentUnpacks != 20 || p.MaxConcurrentUnpacksPerImage != 10 ||
		!p.DiscardUnpackedLayers || parallel.ContentStore.Type != ContentStoreContainerd ||
		!reflect.DeepEqual(p.DecompressStreams["gzip"], DecompressStream{Path: "/usr/bin/unpigz", Args: []string{"-d", "-c"}}) {
		t.Errorf("parallel.toml: %+v", parallel)
	}
	if unknown := noticeKeys(notices, UnknownKey); len(unknown) > 0 {
		t.Errorf("parallel.toml: unknown keys %v", unknown)
	}
	assertRoundTrip(t, parallel)

	fallback, notices := mustRead(t, string(readTestdata(t, "upstream/fallback.toml")))
	if !fallback.PullModes.Parallel.ExperimentalParallelPullAsFallback || fallback.PullModes.Parallel.ConcurrentDownloadChunkSize != 16<<20 ||
		!fallback.Prefetch.Enable || fallback.Prefetch.MaxConcurrency != 10 || !fallback.KubeconfigKeychain.EnableKeychain {
		t.Errorf("fallback.toml: %+v", fallback)
	}
	if unknown := noticeKeys(notices, UnknownKey); len(unknown) > 0 {
		t.Errorf("fallback.toml: unknown keys %v", unknown)
	}
	assertRoundTrip(t, fallback)

	legacy, notices := mustRead(t, string(readTestdata(t, "upstream/legacy.toml")))
	if got := noticeKeys(notices, UnknownKey); !slices.Equal(got, []string{"allow_no_verification", "no_background_fetch"}) {
		t.Errorf("legacy.toml: unknown keys %v", got)
	}
	if legacy.Snapshotter.MinLayerSize != 0 || legacy.Blob.MaxWaitMsec != 20 || legacy.Blob.MinWaitMsec != 20 ||
		legacy.MetricsNetwork != "udp" || legacy.FSCacheType != CacheTypeMemory {
		t.Errorf("legacy.toml: %+v", legacy)
	}
	assertRoundTrip(t, legacy)
}

// TestUpstreamValues: values upstream gives a meaning to load with it.
func TestUpstreamValues(t *testing.T) {
	tests := []struct {
		doc   string
		check func(c *Config) bool
	}{
		{"[snapshotter]\nmin_layer_size = -1", func(c *Config) bool { return c.Snapshotter.MinLayerSize == 0 }},
		{"[snapshotter]\nmin_layer_size = 5", func(c *Config) bool { return c.Snapshotter.MinLayerSize == 5 }},
		{"metrics_address = 'x:1'\nmetrics_network = 'tcp6'", func(c *Config) bool { return c.MetricsNetwork == "tcp6" }},
		{"metrics_address = '/m'\nmetrics_network = 'unixpacket'", func(c *Config) bool { return c.MetricsNetwork == "unixpacket" }},
		// Without an address upstream never listens, whatever the network.
		{"metrics_network = 'udp'", func(c *Config) bool { return c.MetricsNetwork == "udp" }},
		{"filesystem_cache_type = 'directory'", func(c *Config) bool { return c.FSCacheType == CacheTypeDirectory }},
		{"filesystem_cache_type = 'memroy'", func(c *Config) bool { return c.FSCacheType == "memroy" }},
		{"http_cache_type = 'anything'", func(c *Config) bool { return c.HTTPCacheType == "anything" }},
		// [blob] max_wait_msec alone: the shortest wait (30) is above it.
		{"[blob]\nmax_wait_msec = 20", func(c *Config) bool { return c.Blob.MinWaitMsec == 20 && c.Blob.MaxWaitMsec == 20 }},
		{"[http]\nMinWaitMsec = 10\nMaxWaitMsec = 5", func(c *Config) bool {
			return c.HTTP.MinWaitMsec == 5 && c.HTTP.MaxWaitMsec == 5 && c.Blob.MinWaitMsec == 30
		}},
		{"[http]\nMinWaitMsec = -5\nMaxWaitMsec = -1", func(c *Config) bool { return c.HTTP.MinWaitMsec == 1 && c.HTTP.MaxWaitMsec == 1 }},
		{"[blob]\nmin_wait_msec = -1", func(c *Config) bool { return c.Blob.MinWaitMsec == 1 }},
		{"[http]\nRequestTimeoutMsec = -1", func(c *Config) bool { return c.HTTP.RequestTimeoutMsec == maxMilliseconds }},
		{"[http]\nResponseHeaderTimeoutMsec = -1", func(c *Config) bool { return c.HTTP.ResponseHeaderTimeoutMsec == -1 }},
		{"[blob]\nfetching_timeout_sec = -1", func(c *Config) bool { return c.Blob.FetchTimeoutSec == -1 }},
		{"[blob]\nvalid_interval = -1", func(c *Config) bool { return c.Blob.CheckAlways && c.Blob.ValidIntervalSec == 0 }},
		{"[blob]\nmax_span_verification_retries = -2", func(c *Config) bool { return c.Blob.MaxSpanVerificationRetries == 3 }},
		{"[fuse]\nentry_timeout = -5", func(c *Config) bool { return c.Fuse.EntryTimeoutSec == -5 }},
		{"fuse_metrics_emit_wait_duration_sec = -1", func(c *Config) bool { return c.FuseMetricsEmitWaitDurationSec == -1 }},
		{"[background_fetch]\nsilence_period_msec = -1", func(c *Config) bool { return c.BackgroundFetch.SilencePeriodMsec == -1 }},
		{"[background_fetch]\nfetch_period_msec = -1", func(c *Config) bool { return c.BackgroundFetch.FetchPeriodMsec == 1 }},
		{"[background_fetch]\ndisable = true\nemit_metric_period_sec = -1", func(c *Config) bool {
			return c.BackgroundFetch.EmitMetricPeriodSec == -1
		}},
		{"resolve_result_entry = -3", func(c *Config) bool { return c.ResolveResultEntry == 0 }},
		{"metadata_insertion_chunk_size = -1", func(c *Config) bool { return c.MetadataInsertionChunkSize == 0 }},
		{"[directory_cache]\nmax_lru_cache_entry = -1\nmax_cache_fds = -1", func(c *Config) bool {
			return c.DirectoryCache.MaxLRUCacheEntry == 0 && c.DirectoryCache.MaxCacheFds == 0
		}},
	}
	for _, tc := range tests {
		cfg, _ := mustRead(t, tc.doc+"\n")
		if !tc.check(cfg) {
			t.Errorf("Read(%q) = %+v: not read as upstream reads it", tc.doc, cfg)
		}
		assertRoundTrip(t, cfg)
	}
}

func TestUnknownKeyNotices(t *testing.T) {
	tests := []struct {
		doc             string
		key             string
		line            int
		suggestion      string
		reasonSubstring string
	}{
		{"mount_timeout_secs = 30\n", "mount_timeout_secs", 1, "mount_timeout_sec", ""},
		{"\n[pull_modes.soci_v3]\nenable = true\n", "pull_modes.soci_v3", 2, "pull_modes.soci_v1", ""},
		{"[fuse]\nattr_timout = 1\n", "fuse.attr_timout", 2, "fuse.attr_timeout", ""},
		{"[[resolver.host.'docker.io'.mirrors]]\nhots = 'x'\nhost = 'm'\n", `resolver.host."docker.io".mirrors.hots`, 2,
			`resolver.host."docker.io".mirrors.host`, ""},
		{"[pull_modes.soci_v2]\nenabled = true\n", "pull_modes.soci_v2.enabled", 2, "pull_modes.soci_v2.enable", ""},
		// A key written in the wrong table.
		{"attr_timeout = 3\n", "attr_timeout", 1, "fuse.attr_timeout", ""},
		{"\n\nallow_no_verification = true\n", "allow_no_verification", 3, "disable_verification", "removed upstream"},
		{"no_background_fetch = true\n", "no_background_fetch", 1, "background_fetch.disable", "moved"},
		{"xyzzy = 1\n", "xyzzy", 1, "", ""},
		{"[http]\nfoo = 1\n", "http.foo", 2, "", ""},
	}
	for _, tc := range tests {
		_, notices := mustRead(t, tc.doc)
		if len(notices) != 1 {
			t.Errorf("Read(%q): notices %v, want one", tc.doc, notices)
			continue
		}
		n := notices[0]
		if n.Kind != UnknownKey || n.Key != tc.key || n.Line != tc.line || n.Suggestion != tc.suggestion ||
			!strings.Contains(n.Reason, tc.reasonSubstring) {
			t.Errorf("Read(%q): notice %+v, want key %s line %d suggestion %q", tc.doc, n, tc.key, tc.line, tc.suggestion)
		}
		s := n.String()
		if !strings.Contains(s, tc.key) || (tc.suggestion != "" && !strings.Contains(s, "did you mean "+tc.suggestion)) {
			t.Errorf("notice reads %q", s)
		}
	}
	_, notices := mustRead(t, "[http]\nfoo = 1\nbar = 2\n")
	if len(notices) != 2 || notices[0].Line != 2 || notices[1].Line != 3 {
		t.Errorf("two unknown keys: %v", notices)
	}
}

func TestUnusedKeyNotices(t *testing.T) {
	doc := "resolve_result_entry = 5\ndisable_verification = false\ndebug = true\n[background_fetch]\nemit_metric_period_sec = 60\n" +
		"[resolver]\nauth_client_ttl_sec = 60\n[pull_modes.parallel_pull_unpack]\nmax_concurrent_downloads = 5\n"
	_, notices := mustRead(t, doc)
	if got := noticeKeys(notices, UnusedKey); !slices.Equal(got, []string{"resolve_result_entry", "background_fetch.emit_metric_period_sec"}) {
		t.Errorf("unused keys %v, want resolve_result_entry and background_fetch.emit_metric_period_sec", got)
	}
	if notices[1].Line != 5 || !strings.Contains(notices[1].String(), "Prometheus scrapes") {
		t.Errorf("notice %+v", notices[1])
	}
	// Parallel pull as upstream's docs set it up, or keeping the blobs,
	// asks for nothing the daemon lacks.
	_, notices = mustRead(t, string(readTestdata(t, "upstream/parallel.toml")))
	for _, k := range noticeKeys(notices, UnusedKey) {
		if strings.HasPrefix(k, "pull_modes.") {
			t.Errorf("parallel.toml: %s reported unused", k)
		}
	}
	_, notices = mustRead(t, "[pull_modes.parallel_pull_unpack]\nenable = true\ndiscard_unpacked_layers = false\n")
	if got := noticeKeys(notices, UnusedKey); len(got) != 0 {
		t.Errorf("parallel pull keeping blobs: unused keys %v", got)
	}
	// Keys in a different case are the same keys.
	_, notices = mustRead(t, "RESOLVE_RESULT_ENTRY = 3\n")
	if got := noticeKeys(notices, UnusedKey); !slices.Equal(got, []string{"resolve_result_entry"}) {
		t.Errorf("RESOLVE_RESULT_ENTRY: unused keys %v", got)
	}
	// The defaults ask for nothing the daemon lacks, except keys with no
	// counterpart at all.
	_, notices = mustRead(t, string(readTestdata(t, "sample.toml")))
	for _, n := range notices {
		if u := unusedByKey(n.Key); u.Ignored != nil {
			t.Errorf("sample.toml (the defaults): %s", n)
		}
	}
}

func unusedByKey(key string) Unused {
	for _, u := range unusedKeys {
		if u.Key == key {
			return u
		}
	}
	return Unused{}
}

// TestUnusedKeysAreInSchema keeps the table of unused keys free of typos.
func TestUnusedKeysAreInSchema(t *testing.T) {
	known := map[string]bool{}
	for _, k := range schemaKeys() {
		known[strings.Join(k, ".")] = true
	}
	for _, u := range UnusedKeys() {
		if !known[u.Key] || u.Reason == "" {
			t.Errorf("unused key %q is not in the schema or has no reason", u.Key)
		}
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{{"", "abc", 3}, {"kitten", "sitting", 3}, {"same", "same", 0}, {"ab", "ba", 2}} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
