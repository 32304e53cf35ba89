package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/awslabs/soci-snapshotter/soci"
	"github.com/opencontainers/go-digest"
)

func TestPrefetchPaths(t *testing.T) {
	dir := t.TempDir()
	js := filepath.Join(dir, "p.json")
	os.WriteFile(js, []byte(`[" /app/a.txt ", "", "app/b"]`), 0o600)
	got, err := prefetchPaths([]string{"/etc/x", "  ", " /y "}, js)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/etc/x", "/y", "/app/a.txt", "app/b"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, err := prefetchPaths(nil, ""); err != nil || len(got) != 0 {
		t.Errorf("no flags: %q %v", got, err)
	}
	for name, body := range map[string]string{"object": `{"a":1}`, "numbers": `[1,2]`, "not json": `/a\n/b`} {
		os.WriteFile(js, []byte(body), 0o600)
		if _, err := prefetchPaths(nil, js); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := prefetchPaths(nil, filepath.Join(dir, "none.json")); err == nil {
		t.Error("missing JSON file: no error")
	}
}

// TestPrefetchFlagsParse: --prefetch-file is repeatable and each value is
// a path in the image (a file of that name need not exist locally).
func TestPrefetchFlagsParse(t *testing.T) {
	_, stderr, code := runSoci(t, "--address", "/nonexistent.sock", "create", "--prefetch-file", "/a", "--prefetch-file", "/b",
		"--prefetch-files-json", "/nonexistent.json", "some/image:tag")
	if code == 0 || !strings.Contains(stderr, "prefetch-files-json") {
		t.Errorf("a missing --prefetch-files-json file must be the error before containerd is needed: %d %q", code, stderr)
	}
}

func TestPrefetchOutput(t *testing.T) {
	a := &soci.PrefetchArtifact{Version: "1.0", PrefetchSpans: []soci.PrefetchSpan{{StartSpan: 0, EndSpan: 2}, {StartSpan: 5, EndSpan: 5, Priority: 1}}}
	if n := spanCount(a); n != 4 {
		t.Errorf("spanCount = %d, want 4", n)
	}
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	var b bytes.Buffer
	rows := []prefetchRow{{Digest: "sha256:aa", LayerDigest: "sha256:bb", TotalSpans: 4, CreatedAt: now.Add(-90 * time.Second)},
		{Digest: "sha256:cc", LayerDigest: "sha256:dd", TotalSpans: -1}}
	if err := writePrefetchTable(&b, rows, now); err != nil {
		t.Fatal(err)
	}
	want := "DIGEST       LAYER DIGEST    SPANS    CREATED      \n" +
		"sha256:aa    sha256:bb       4        1m30s ago    \n" +
		"sha256:cc    sha256:dd       N/A      n/a          \n"
	if b.String() != want {
		t.Errorf("table:\n%q\nwant\n%q", b.String(), want)
	}
	b.Reset()
	ae := &soci.ArtifactEntry{OriginalDigest: "sha256:bb", Size: 77, CreatedAt: now}
	if err := writePrefetchInfo(&b, digest.Digest("sha256:aa"), a, ae, true); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"Digest:        sha256:aa\n", "Span Ranges:   2\n", "Layer Digest:  sha256:bb\n", "Size:          77 bytes\n",
		"Created:       2025-01-02 03:04:05\n", "  [0] StartSpan: 0, EndSpan: 2 (covers 3 spans)\n", "      Priority: 1\n",
		"Total spans to prefetch: 4\n", "Raw JSON:\n{\n  \"version\": \"1.0\",\n  \"prefetch_spans\": ["} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("info lacks %q:\n%s", line, b.String())
		}
	}
}
