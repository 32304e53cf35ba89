package config

import (
	"slices"
	"testing"
)

// TestContentStoreNotices: [content_store] warns only when it asks for
// containerd's content store, which the daemon does not use; "soci" (a
// store of the daemon's own under its root) is what it does, namespace is
// unused by the reference too, and a value it cannot use stays fatal.
func TestContentStoreNotices(t *testing.T) {
	for doc, want := range map[string][]string{
		"[content_store]\ntype = 'soci'\n":                                        nil,
		"[content_store]\ncontainerd_address = '/x.sock'\nnamespace = 'k8s.io'\n": nil,
		"[content_store]\ntype = 'containerd'\n":                                  {"content_store.type"},
		"[content_store]\ntype = 'containerd'\ncontainerd_address = 'unix:///x.sock'\n": {
			"content_store.type", "content_store.containerd_address"},
	} {
		_, notices := mustRead(t, doc)
		if got := noticeKeys(notices, UnusedKey); !slices.Equal(got, want) {
			t.Errorf("%q: unused keys %v, want %v", doc, got, want)
		}
	}
	if _, err := Parse([]byte("[content_store]\ntype = 'local'\n")); err == nil {
		t.Error("content_store.type = 'local' accepted")
	}
}
