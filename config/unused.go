package config

import (
	"slices"
	"strings"
)

// Unused is a key of the schema that the daemon accepts, so that files
// written for upstream load, but does not act on. A file that sets it gets
// one warning at start (and fails `config check --strict`) when Ignored
// says its value asks for something the daemon does not do.
type Unused struct {
	// Key is the dotted path.
	Key string
	// Reason says what the daemon does instead.
	Reason string
	// Ignored reports whether c's value of the key asks for a behaviour the
	// daemon does not have. nil: any value written in the file does.
	Ignored func(c *Config) bool
}

// unusedKeys is the table of accepted-but-unused keys. Implementing a key
// removes its row. [limits] is ours and wired through fs.Options; keys that
// are honoured as upper bounds ([background_fetch] silence_period_msec,
// fetch_period_msec, [blob] fetching_timeout_sec) are not listed, and
// neither is http_cache_type, which upstream does not use either, nor
// [content_store] namespace, which it no longer uses, nor
// [blob] force_single_range_mode: every registry request the daemon makes
// asks for a single range, so the mode it asks for is always on.
var unusedKeys = []Unused{
	{"filesystem_cache_type", "span data is always cached on disk under the root directory ([directory_cache] max_bytes bounds it)",
		func(c *Config) bool { return c.FSCacheType == CacheTypeMemory }},
	{"resolve_result_entry", "there is no cache of resolved layers to size: a layer is resolved once per mount",
		func(c *Config) bool { return c.ResolveResultEntry != 0 }},
	{"debug_address", "pprof is unauthenticated, so it is served only on a unix socket or a loopback address; this one is not served",
		func(c *Config) bool {
			return c.DebugAddress != "" && DebugNetwork(c.DebugAddress) == NetworkTCP && CheckLoopback(c.DebugAddress) != nil
		}},
	{"fuse_metrics_emit_wait_duration_sec", "per-image FUSE operation counts (soci_fs_image_operation_count_key) are " +
		"served live at every scrape, not published once this long after an image's first mount", nil},
	{"metadata_store", metadataReason,
		func(c *Config) bool { return c.MetadataStore != MetadataStoreDB }},
	{"metadata_db_no_sync", metadataReason,
		func(c *Config) bool { return c.MetadataDBNoSync }},
	{"metadata_insertion_chunk_size", metadataReason,
		func(c *Config) bool { return c.MetadataInsertionChunkSize != 0 }},
	{"skip_check_snapshotter_supported", "the d_type and overlayfs checks of the root directory always run at start: " +
		"the snapshotter cannot work without them, and skipping the check would only turn a start-up error into failed mounts",
		func(c *Config) bool { return c.SkipCheckSnapshotterSupported }},

	{"directory_cache.max_lru_cache_entry", "there is no in-memory buffer in front of the span cache (upstream has one only with direct = false)",
		func(c *Config) bool { return c.DirectoryCache.MaxLRUCacheEntry != 0 && !c.DirectoryCache.Direct }},
	{"directory_cache.sync_add", "span cache writes are always synchronous (as with sync_add = true): there is no in-memory buffer to write behind",
		func(c *Config) bool { return !c.DirectoryCache.SyncAdd && !c.DirectoryCache.Direct }},
	{"directory_cache.direct", "there is no in-memory buffer in front of the span cache (as with direct = true)",
		func(c *Config) bool { return !c.DirectoryCache.Direct }},

	{"background_fetch.emit_metric_period_sec", "the background fetcher's metrics are read when Prometheus scrapes", nil},
}

const metadataReason = "the daemon keeps no metadata database: each layer's file tree is built in memory " +
	"from its zTOC at mount (fs/layer), so there is nothing to store, sync or insert in chunks"

// UnusedKeys returns the table of keys the daemon accepts but does not act
// on, in schema order.
func UnusedKeys() []Unused {
	return slices.Clone(unusedKeys)
}

// unusedKeyNotices returns a notice for each key of unusedKeys that the
// document sets and whose value c (the document, normalized) does not
// honour. lines maps the document's dotted key paths to their lines.
func unusedKeyNotices(c *Config, lines map[string]int) []Notice {
	lower := make(map[string]int, len(lines))
	for k, line := range lines {
		lower[strings.ToLower(k)] = line
	}
	var notices []Notice
	for _, u := range unusedKeys {
		line, ok := setIn(u.Key, lower)
		if !ok || (u.Ignored != nil && !u.Ignored(c)) {
			continue
		}
		notices = append(notices, Notice{Kind: UnusedKey, Key: u.Key, Line: line, Reason: u.Reason})
	}
	return notices
}

// setIn reports whether the document whose lower-cased key paths are lines
// sets key, or a table below it, and the first line that does.
func setIn(key string, lines map[string]int) (int, bool) {
	if line, ok := lines[key]; ok {
		return line, true
	}
	first, found := 0, false
	for k, line := range lines {
		if strings.HasPrefix(k, key+".") || strings.HasPrefix(k, key+"[") {
			if !found || line < first {
				first, found = line, true
			}
		}
	}
	return first, found
}
