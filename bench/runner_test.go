package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWalks: the bench waits for layers to become fully local only when
// the daemon's config lets it fetch them in the background.
func TestWalks(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		toml string
		want bool
	}{
		"default":  {DefaultDaemonConfig, true},
		"disabled": {DefaultDaemonConfig + "\n[background_fetch]\ndisable = true\n", false},
		"invalid":  {"[background_fetch\n", true},
	} {
		path := filepath.Join(dir, name+".toml")
		if err := os.WriteFile(path, []byte(tc.toml), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := walks(path); got != tc.want {
			t.Errorf("%s: walks = %v, want %v", name, got, tc.want)
		}
	}
	if !walks(filepath.Join(dir, "missing.toml")) {
		t.Error("a missing config: walks = false, want true (the run's bound ends the wait)")
	}
}

// TestRotate: each round runs the columns in a different order, every
// column once, and round n (the number of columns) is back to the first.
func TestRotate(t *testing.T) {
	cols := []column{{snapshotter: snapshotter{name: "overlayfs"}}, {snapshotter: snapshotter{name: "soci"}}, {snapshotter: snapshotter{name: "ref"}}}
	names := func(cs []column) string {
		var out []string
		for _, c := range cs {
			out = append(out, c.name)
		}
		return strings.Join(out, ",")
	}
	for i, want := range []string{"overlayfs,soci,ref", "soci,ref,overlayfs", "ref,overlayfs,soci", "overlayfs,soci,ref"} {
		if got := names(rotate(cols, i)); got != want {
			t.Errorf("round %d: %s, want %s", i, got, want)
		}
	}
	if got := names(cols); got != "overlayfs,soci,ref" {
		t.Errorf("rotate changed its argument: %s", got)
	}
	if got := rotate(nil, 3); len(got) != 0 {
		t.Errorf("rotate(nil) = %v", got)
	}
}
