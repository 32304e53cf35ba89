package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
)

// TestBadConfigRefused: the daemon exits non-zero, naming the problem, for a
// typo'd key, a wrong type, an invalid value and an unreadable file.
func TestBadConfigRefused(t *testing.T) {
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(tools.Ours, "soci-snapshotter-grpc")
	cases := []struct {
		name, config, want string
	}{
		{"unknown key", "mount_timeout_secs = 3\n", "mount_timeout_secs"},
		{"unknown section key", "[pull_modes.soci_v2]\nenabled = true\n", "pull_modes.soci_v2.enabled"},
		{"wrong type", "mount_timeout_sec = \"30\"\n", "mount_timeout_sec"},
		{"invalid value", "[background_fetch]\ndrop_policy = \"middle\"\n", "background_fetch.drop_policy"},
		{"unreadable file", "", "is a directory"},
		{"missing file", "", "no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "config.toml")
			switch tc.name {
			case "unreadable file":
				if err := os.Mkdir(path, 0o755); err != nil {
					t.Fatal(err)
				}
			case "missing file":
			default:
				if err := os.WriteFile(path, []byte(tc.config), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			ctx := testContext(t, 30*time.Second)
			out, err := harness.Run(ctx, nil, bin, "--config", path,
				"--root", filepath.Join(dir, "root"), "--address", filepath.Join(dir, "s.sock"))
			if err == nil {
				t.Fatalf("daemon accepted the config:\n%s", out)
			}
			if ctx.Err() != nil {
				t.Fatalf("daemon did not exit on a bad config: %v", ctx.Err())
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("message does not name %q:\n%s", tc.want, out)
			}
		})
	}
}

// TestConfigCommands: `config default` prints TOML that the daemon accepts,
// and `config dump` shows a value set in the file.
func TestConfigCommands(t *testing.T) {
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(tools.Ours, "soci-snapshotter-grpc")
	ctx := testContext(t, 30*time.Second)
	def, err := harness.Run(ctx, nil, bin, "config", "default")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(def, "[pull_modes.soci_v2]") {
		t.Errorf("default config lacks [pull_modes.soci_v2]:\n%s", def)
	}
	path := filepath.Join(t.TempDir(), "config.toml")
	edited := strings.Replace(def, "mount_timeout_sec = 30", "mount_timeout_sec = 17", 1)
	if edited == def {
		t.Fatalf("default config has no `mount_timeout_sec = 30` line:\n%s", def)
	}
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	dump, err := harness.Run(ctx, nil, bin, "--config", path, "config", "dump")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(dump, "mount_timeout_sec = 17") {
		t.Errorf("dump does not show the edited value:\n%s", dump)
	}
}
