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

// TestSpanPathBoundsWired: max_concurrency reaches the registry client and
// [limits] max_decompress_bytes the lazy filesystem, defaults included.
func TestSpanPathBoundsWired(t *testing.T) {
	for _, tc := range []struct {
		doc              string
		conc, decompress int64
	}{
		{"", 100, 64 << 20},
		{"max_concurrency = 7\n[limits]\nmax_decompress_bytes = '8mb'\n", 7, 8 << 20},
		{"max_concurrency = -1\n", 0, 64 << 20},
	} {
		cfg, err := config.Parse([]byte(tc.doc))
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.doc, err)
		}
		if got := registryOptions(cfg).MaxConcurrency; got != tc.conc {
			t.Errorf("Parse(%q): MaxConcurrency = %d, want %d", tc.doc, got, tc.conc)
		}
		if got := fsOptions(cfg, t.TempDir(), nil, nil).MaxDecompressBytes; got != tc.decompress {
			t.Errorf("Parse(%q): MaxDecompressBytes = %d, want %d", tc.doc, got, tc.decompress)
		}
	}
}
