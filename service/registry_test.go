package service

import (
	"slices"
	"testing"

	"github.com/fastsoci/soci-snapshotter/config"
)

func TestRegistryOptionsHostsDirs(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want []string
	}{
		{"", []string{"/etc/containerd/certs.d"}},
		{"[resolver]\nconfig_path = '/tmp/a:/tmp/b'\n", []string{"/tmp/a", "/tmp/b"}},
		{"[resolver]\nconfig_path = ''\n", nil},
	} {
		cfg, err := config.Parse([]byte(tc.doc))
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.doc, err)
		}
		if got := registryOptions(cfg).HostsDirs; !slices.Equal(got, tc.want) {
			t.Errorf("Parse(%q): HostsDirs = %q, want %q", tc.doc, got, tc.want)
		}
	}
}
