package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
)

// TestBadConfigRefused: the daemon exits non-zero, naming the problem, for a
// wrong type, an invalid value and an unreadable file. (Unknown keys are
// warnings, as upstream: see TestUpstreamConfigJSONLog.)
func TestBadConfigRefused(t *testing.T) {
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(tools.Ours, "soci-snapshotter-grpc")
	cases := []struct {
		name, config, want string
	}{
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

// TestUpstreamConfigJSONLog: a configuration written for upstream, with a
// key upstream removed, a typo and a key we do not act on, starts the
// daemon; with the default log format every line of its log is a JSON
// object with containerd's fields, and the warnings name key, line and the
// nearest known key.
func TestUpstreamConfigJSONLog(t *testing.T) {
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	conf := "allow_no_verification = true\n" +
		"metrics_network = \"tcp4\"\n" +
		"resolve_result_entry = 10\n" +
		"[pull_modes.soci_v2]\nenabled = true\n" +
		"[snapshotter]\nmin_layer_size = -1\n" +
		"[blob]\nmax_wait_msec = 20\n"
	d, err := harness.NewDaemon(filepath.Join(tools.Ours, "soci-snapshotter-grpc"), t.TempDir(), conf)
	if err != nil {
		t.Fatal(err)
	}
	d.LogFormat = "" // the default: JSON
	t.Cleanup(func() { _ = d.Cleanup() })
	ctx := testContext(t, time.Minute)
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(); err != nil {
		t.Fatalf("stop: %v\n%s", err, d.LogTail(20))
	}
	data, err := os.ReadFile(d.Log())
	if err != nil {
		t.Fatal(err)
	}
	warnings := map[string]map[string]any{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		for _, field := range []string{"time", "level", "msg"} {
			if _, ok := entry[field]; !ok {
				t.Errorf("log line lacks %q: %q", field, line)
			}
		}
		if key, ok := entry["key"].(string); ok && entry["level"] == "warning" {
			warnings[key] = entry
		}
	}
	want := map[string]string{ // key -> nearest known key
		"allow_no_verification":      "disable_verification",
		"pull_modes.soci_v2.enabled": "pull_modes.soci_v2.enable",
	}
	for key, suggestion := range want {
		w, ok := warnings[key]
		if !ok {
			t.Errorf("no warning for %s in:\n%s", key, data)
			continue
		}
		if w["did_you_mean"] != suggestion || w["line"] == nil {
			t.Errorf("warning for %s = %v, want line and did_you_mean %s", key, w, suggestion)
		}
	}
	if _, ok := warnings["resolve_result_entry"]; !ok {
		t.Errorf("no warning for the unused key resolve_result_entry in:\n%s", data)
	}
	if !strings.Contains(string(data), "starting soci-snapshotter-grpc") {
		t.Errorf("no start line in:\n%s", data)
	}
}
