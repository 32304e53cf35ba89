package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strings"
)

// Validate reports every invalid setting of a normalized configuration (as
// returned by Default, Parse or Load), each error naming the dotted key. A
// setting left at 0 where the file format reads 0 as "use the default" is
// invalid here: normalization would have replaced it.
func (c *Config) Validate() error {
	var v validator
	// Upstream caches in memory for "memory" and on disk for any other
	// filesystem_cache_type, and does not read http_cache_type.
	v.nonNegative("resolve_result_entry", int64(c.ResolveResultEntry))
	v.nonNegative("max_concurrency", c.MaxConcurrency)
	v.positiveSec("mount_timeout_sec", c.MountTimeoutSec)
	v.seconds("fuse_metrics_emit_wait_duration_sec", c.FuseMetricsEmitWaitDurationSec)
	if c.DebugAddress != "" && DebugNetwork(c.DebugAddress) == NetworkTCP {
		// A well-formed address that is not loopback loads (upstream files
		// use them) but is not served: see the unused keys.
		if _, _, err := net.SplitHostPort(c.DebugAddress); err != nil {
			v.fail("debug_address", "want a unix socket path or a loopback host:port: %v", err)
		}
	}
	if c.MetricsAddress != "" {
		// Upstream passes any other network to net.Listen; unused without
		// an address.
		v.oneOf("metrics_network", c.MetricsNetwork, MetricsNetworks...)
	}
	v.oneOf("metadata_store", c.MetadataStore, MetadataStoreDB, MetadataStoreDBMulti)
	v.nonNegative("metadata_insertion_chunk_size", int64(c.MetadataInsertionChunkSize))
	c.HTTP.validate(&v)
	c.Blob.validate(&v)
	v.nonNegative("directory_cache.max_lru_cache_entry", int64(c.DirectoryCache.MaxLRUCacheEntry))
	v.nonNegative("directory_cache.max_cache_fds", int64(c.DirectoryCache.MaxCacheFds))
	if c.DirectoryCache.MaxBytes <= 0 && c.DirectoryCache.MaxBytes != Unbounded {
		v.fail("directory_cache.max_bytes", "must be positive, or empty for an unbounded cache")
	}
	v.seconds("fuse.attr_timeout", c.Fuse.AttrTimeoutSec)
	v.seconds("fuse.entry_timeout", c.Fuse.EntryTimeoutSec)
	v.seconds("fuse.negative_timeout", c.Fuse.NegativeTimeoutSec)
	if c.Fuse.PassthroughMaxBytes <= 0 {
		v.fail("fuse.passthrough_max_bytes", "must be positive")
	}
	c.BackgroundFetch.validate(&v)
	c.ContentStore.validate(&v)
	v.nonNegative("prefetch.max_concurrency", c.Prefetch.MaxConcurrency)
	v.positiveSec("prefetch.record_seconds", c.Prefetch.RecordSeconds)
	c.PullModes.Parallel.validate(&v)
	v.nonEmpty("cri_keychain.image_service_path", c.CRIKeychain.ImageServicePath)
	c.Resolver.validate(&v)
	v.nonNegative("snapshotter.min_layer_size", c.Snapshotter.MinLayerSize)
	c.Limits.validate(&v)
	return errors.Join(v.errs...)
}

func (h *HTTPConfig) validate(v *validator) {
	v.positiveMsec("http.DialTimeoutMsec", h.DialTimeoutMsec)
	// Negative: no timeout, as net/http reads it.
	v.nonZeroMsec("http.ResponseHeaderTimeoutMsec", h.ResponseHeaderTimeoutMsec)
	v.positiveMsec("http.RequestTimeoutMsec", h.RequestTimeoutMsec)
	v.waits("http.MinWaitMsec", h.MinWaitMsec, "http.MaxWaitMsec", h.MaxWaitMsec)
}

func (b *BlobConfig) validate(v *validator) {
	v.nonNegativeSec("blob.valid_interval", b.ValidIntervalSec)
	// Negative: no timeout, as net/http reads it.
	v.nonZeroSec("blob.fetching_timeout_sec", b.FetchTimeoutSec)
	v.waits("blob.min_wait_msec", b.MinWaitMsec, "blob.max_wait_msec", b.MaxWaitMsec)
	v.nonNegative("blob.max_span_verification_retries", int64(b.MaxSpanVerificationRetries))
}

func (b *BackgroundFetchConfig) validate(v *validator) {
	// Negative: no silence period, as time.Sleep reads it.
	v.nonZeroMsec("background_fetch.silence_period_msec", b.SilencePeriodMsec)
	v.positiveMsec("background_fetch.fetch_period_msec", b.FetchPeriodMsec)
	if b.MaxQueueSize == 0 {
		v.fail("background_fetch.max_queue_size", "must be positive, or negative for unbounded")
	}
	v.oneOf("background_fetch.drop_policy", b.DropPolicy, DropOldest, DropNewest)
	if b.Disable {
		v.seconds("background_fetch.emit_metric_period_sec", b.EmitMetricPeriodSec)
	} else {
		// Upstream's fetcher makes a time.Ticker of it, which panics below 1.
		v.positiveSec("background_fetch.emit_metric_period_sec", b.EmitMetricPeriodSec)
	}
}

func (s *ContentStoreConfig) validate(v *validator) {
	v.oneOf("content_store.type", string(s.Type), string(ContentStoreSOCI), string(ContentStoreContainerd))
	v.nonEmpty("content_store.containerd_address", s.ContainerdAddress)
	v.nonEmpty("content_store.namespace", s.Namespace)
}

func (p *ParallelPullConfig) validate(v *validator) {
	const table = "pull_modes.parallel_pull_unpack."
	if p.ConcurrentDownloadChunkSize <= 0 && p.ConcurrentDownloadChunkSize != Unbounded {
		v.fail(table+"concurrent_download_chunk_size", "must be positive, or empty for whole layers")
	}
	if p.Enable || p.ExperimentalParallelPullAsFallback {
		v.atMost(table+"max_concurrent_downloads_per_image", p.MaxConcurrentDownloadsPerImage,
			"max_concurrent_downloads", p.MaxConcurrentDownloads)
		v.atMost(table+"max_concurrent_unpacks_per_image", p.MaxConcurrentUnpacksPerImage,
			"max_concurrent_unpacks", p.MaxConcurrentUnpacks)
	}
	for _, name := range slices.Sorted(maps.Keys(p.DecompressStreams)) {
		key := table + "decompress_streams." + quoteKeyPart(name) + ".path"
		if path := p.DecompressStreams[name].Path; !filepath.IsAbs(path) {
			v.fail(key, "must be an absolute path, got %q", path)
		}
	}
}

func (r *ResolverConfig) validate(v *validator) {
	v.seconds("resolver.auth_client_ttl_sec", r.AuthClientTTLSec)
	for _, dir := range r.HostsDirs() {
		if !filepath.IsAbs(dir) {
			v.fail("resolver.config_path", "want absolute directories separated by ':', got %q", r.ConfigPath)
			break
		}
	}
	for _, registry := range slices.Sorted(maps.Keys(r.Host)) {
		table := "resolver.host." + quoteKeyPart(registry)
		if registry == "" {
			v.fail(table, "registry host name must not be empty")
		}
		for i, m := range r.Host[registry].Mirrors {
			entry := fmt.Sprintf("%s.mirrors[%d]", table, i)
			v.nonEmpty(entry+".host", strings.TrimSpace(m.Host))
			v.seconds(entry+".request_timeout_sec", m.RequestTimeoutSec)
		}
	}
}

// validator collects one keyError per invalid setting.
type validator struct {
	errs []error
}

func (v *validator) fail(key, format string, args ...any) {
	v.errs = append(v.errs, &keyError{key: key, msg: fmt.Sprintf(format, args...)})
}

func (v *validator) oneOf(key, value string, allowed ...string) {
	if slices.Contains(allowed, value) {
		return
	}
	quoted := make([]string, len(allowed))
	for i, a := range allowed {
		quoted[i] = fmt.Sprintf("%q", a)
	}
	v.fail(key, "invalid value %q: want one of %s", value, strings.Join(quoted, ", "))
}

func (v *validator) nonEmpty(key, value string) {
	if value == "" {
		v.fail(key, "must not be empty")
	}
}

func (v *validator) nonNegative(key string, value int64) {
	if value < 0 {
		v.fail(key, "must not be negative, got %d", value)
	}
}

// seconds accepts any duration that converts to time.Duration.
func (v *validator) positive(key string, value int64) {
	if value <= 0 {
		v.fail(key, "must be positive (0 takes the default)")
	}
}

func (v *validator) seconds(key string, value Seconds) {
	if value > maxSeconds || value < -maxSeconds {
		v.fail(key, "%d seconds is out of range", value)
	}
}

func (v *validator) nonZeroSec(key string, value Seconds) {
	if value == 0 {
		v.fail(key, "must not be 0 (0 takes the default)")
	}
	v.seconds(key, value)
}

func (v *validator) nonZeroMsec(key string, value Milliseconds) {
	switch {
	case value == 0:
		v.fail(key, "must not be 0 (0 takes the default)")
	case value > maxMilliseconds || value < -maxMilliseconds:
		v.fail(key, "%d milliseconds is out of range", value)
	}
}

func (v *validator) nonNegativeSec(key string, value Seconds) {
	v.nonNegative(key, int64(value))
	if value > maxSeconds {
		v.fail(key, "%d seconds is out of range", value)
	}
}

func (v *validator) positiveSec(key string, value Seconds) {
	switch {
	case value <= 0:
		v.fail(key, "must be a positive number of seconds, got %d", value)
	case value > maxSeconds:
		v.fail(key, "%d seconds is out of range", value)
	}
}

func (v *validator) positiveMsec(key string, value Milliseconds) {
	switch {
	case value <= 0:
		v.fail(key, "must be a positive number of milliseconds, got %d", value)
	case value > maxMilliseconds:
		v.fail(key, "%d milliseconds is out of range", value)
	}
}

// waits checks a retry backoff range.
func (v *validator) waits(minKey string, minWait Milliseconds, maxKey string, maxWait Milliseconds) {
	v.positiveMsec(minKey, minWait)
	v.positiveMsec(maxKey, maxWait)
	if minWait > maxWait {
		v.fail(minKey, "%d is more than %s (%d)", minWait, maxKey, maxWait)
	}
}

// atMost checks that a per-image limit does not exceed its global limit,
// unless the global limit is unbounded (zero or negative).
func (v *validator) atMost(key string, value int64, globalKey string, global int64) {
	if global > 0 && value > global {
		v.fail(key, "%d is more than %s (%d)", value, globalKey, global)
	}
}

func (l *LimitsConfig) validate(v *validator) {
	v.positive("limits.max_index_entries", int64(l.MaxIndexEntries))
	v.positive("limits.max_ztoc_bytes", int64(l.MaxZTOCBytes))
	v.positive("limits.max_ztoc_entries", int64(l.MaxZTOCEntries))
	v.positive("limits.max_ztoc_heap_bytes", int64(l.MaxZTOCHeapBytes))
	v.positive("limits.max_tree_depth", int64(l.MaxTreeDepth))
	v.positive("limits.max_decompress_bytes", int64(l.MaxDecompressBytes))
	v.positive("limits.host_memory_limit", int64(l.HostMemoryLimit))
	v.nonNegative("limits.neighbour_fetch_bytes", int64(l.NeighbourFetchBytes))
	v.nonNegative("limits.background_max_delay_msec", int64(l.BackgroundMaxDelayMsec))
	v.nonNegative("limits.background_fast_link_mbit", l.BackgroundFastLinkMbit)
}
