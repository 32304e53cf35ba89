package config

import (
	"slices"
	"testing"
)

// TestContentStoreNotices: every [content_store] value the reference gives
// meaning to is acted on ("containerd" makes the FUSE host read containerd's
// content store before the registry), so none warns; namespace is unused by
// the reference too; a type it cannot use stays fatal.
func TestContentStoreNotices(t *testing.T) {
	for _, doc := range []string{
		"[content_store]\ntype = 'soci'\n",
		"[content_store]\ncontainerd_address = '/x.sock'\nnamespace = 'k8s.io'\n",
		"[content_store]\ntype = 'containerd'\n",
		"[content_store]\ntype = 'containerd'\ncontainerd_address = 'unix:///x.sock'\n",
	} {
		c, notices := mustRead(t, doc)
		if got := noticeKeys(notices, UnusedKey); len(got) != 0 {
			t.Errorf("%q: unused keys %v, want none", doc, got)
		}
		if c.ContentStore.ContainerdAddress == "unix:///x.sock" {
			t.Errorf("%q: unix:// prefix kept", doc)
		}
	}
	for _, u := range UnusedKeys() {
		if slices.Contains([]string{"content_store.type", "content_store.containerd_address"}, u.Key) {
			t.Errorf("%s is listed as unused", u.Key)
		}
	}
	if _, err := Parse([]byte("[content_store]\ntype = 'local'\n")); err == nil {
		t.Error("content_store.type = 'local' accepted")
	}
}
