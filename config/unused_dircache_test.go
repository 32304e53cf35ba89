package config

import (
	"slices"
	"testing"
)

// TestDirectoryCacheNotices: [directory_cache] keys warn only when their
// value asks for what upstream does with an in-memory buffer (direct =
// false); the daemon's synchronous writes are what sync_add = true asks.
func TestDirectoryCacheNotices(t *testing.T) {
	for doc, want := range map[string][]string{
		"[directory_cache]\nsync_add = true\n":                                  nil,
		"[directory_cache]\nmax_lru_cache_entry = 5\n":                          nil,
		"[directory_cache]\ndirect = false\nsync_add = false\n":                 {"directory_cache.sync_add", "directory_cache.direct"},
		"[directory_cache]\ndirect = false\nmax_lru_cache_entry = 5\n":          {"directory_cache.max_lru_cache_entry", "directory_cache.direct"},
		"[directory_cache]\ndirect = false\nsync_add = true\nmax_cache_fds = 3": {"directory_cache.direct"},
	} {
		_, notices := mustRead(t, doc)
		if got := noticeKeys(notices, UnusedKey); !slices.Equal(got, want) {
			t.Errorf("%q: unused keys %v, want %v", doc, got, want)
		}
	}
}
