package bench

import (
	"os"
	"path/filepath"
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
