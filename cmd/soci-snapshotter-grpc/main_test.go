package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/log"

	"github.com/fastsoci/soci-snapshotter/config"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

func TestFlagPrecedence(t *testing.T) {
	vars := map[string]string{
		envAddress: "/env/soci.sock", envConfig: "/env/config.toml", envRoot: "/env/root",
		envLogLevel: "debug", envLogFormat: "text",
	}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    flags
		wantErr bool
	}{
		{"defaults", nil, nil, flags{address: config.DefaultAddress, configPath: config.DefaultConfigPath,
			root: config.DefaultRootPath, logLevel: "info", logFormat: "json"}, false},
		{"environment", nil, vars, flags{address: "/env/soci.sock", configPath: "/env/config.toml",
			root: "/env/root", logLevel: "debug", logFormat: "text", configSet: true}, false},
		{"flags win", []string{"--address", "/f.sock", "--config", "/f.toml", "--root", "/f", "--log-level", "warn", "--log-format", "json"},
			vars, flags{address: "/f.sock", configPath: "/f.toml", root: "/f", logLevel: "warn", logFormat: "json", configSet: true}, false},
		{"config flag is explicit", []string{"--config", "/f.toml"}, nil, flags{address: config.DefaultAddress,
			configPath: "/f.toml", root: config.DefaultRootPath, logLevel: "info", logFormat: "json", configSet: true}, false},
		{"unknown flag", []string{"--bogus"}, nil, flags{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := parseFlags(tc.args, env(tc.env), io.Discard)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && *got != tc.want {
				t.Errorf("flags = %+v, want %+v", *got, tc.want)
			}
		})
	}
}

// restoreLogger undoes setupLogging's changes to the process's logger.
func restoreLogger(t *testing.T) {
	l := log.L.Logger
	formatter, level, out := l.Formatter, l.GetLevel(), l.Out
	t.Cleanup(func() {
		l.SetFormatter(formatter)
		l.SetLevel(level)
		l.SetOutput(out)
	})
}

func TestSetupLoggingJSON(t *testing.T) {
	restoreLogger(t)
	var buf bytes.Buffer
	if err := setupLogging("info", "json", &buf); err != nil {
		t.Fatal(err)
	}
	log.G(context.Background()).WithField("layer", "sha256:x").Info("layer mounted lazily")
	log.G(context.Background()).Debug("not at info")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("want one line, got %q", buf.String())
	}
	var entry map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &entry); err != nil {
		t.Fatalf("not JSON: %q: %v", lines[0], err)
	}
	// containerd's (and upstream's) fields: level, msg, time in RFC 3339
	// with fixed nanoseconds.
	if entry["level"] != "info" || entry["msg"] != "layer mounted lazily" || entry["layer"] != "sha256:x" {
		t.Errorf("entry = %v", entry)
	}
	ts, _ := entry["time"].(string)
	if _, err := time.Parse(log.RFC3339NanoFixed, ts); err != nil || len(ts) < len("2006-01-02T15:04:05.000000000Z") {
		t.Errorf("time %q is not RFC3339NanoFixed: %v", ts, err)
	}
}

func TestSetupLoggingText(t *testing.T) {
	restoreLogger(t)
	var buf bytes.Buffer
	if err := setupLogging("debug", "text", &buf); err != nil {
		t.Fatal(err)
	}
	log.G(context.Background()).Debug("hello")
	if !strings.Contains(buf.String(), "level=debug") || !strings.Contains(buf.String(), "msg=hello") {
		t.Errorf("text line = %q", buf.String())
	}
	if err := setupLogging("info", "yaml", io.Discard); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("yaml format: err = %v", err)
	}
	if err := setupLogging("loud", "text", io.Discard); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("bad level: err = %v", err)
	}
}

func TestLogNotices(t *testing.T) {
	restoreLogger(t)
	var buf bytes.Buffer
	if err := setupLogging("info", "json", &buf); err != nil {
		t.Fatal(err)
	}
	_, notices, err := config.Read([]byte("\nallow_no_verification = true\n\nresolve_result_entry = 2\n"))
	if err != nil {
		t.Fatal(err)
	}
	logNotices(context.Background(), "/etc/x.toml", notices)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 warnings, got %q", buf.String())
	}
	var unknown, unused map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &unknown); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &unused); err != nil {
		t.Fatal(err)
	}
	if unknown["level"] != "warning" || unknown["key"] != "allow_no_verification" || unknown["line"] != float64(2) ||
		unknown["did_you_mean"] != "disable_verification" || !strings.Contains(unknown["msg"].(string), "did you mean disable_verification") {
		t.Errorf("unknown key warning = %v", unknown)
	}
	if unused["level"] != "warning" || unused["key"] != "resolve_result_entry" || unused["line"] != float64(4) || unused["reason"] == "" {
		t.Errorf("unused key warning = %v", unused)
	}
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, doc string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	clean := write("clean.toml", "[snapshotter]\nmin_layer_size = -1\n")
	unknown := write("unknown.toml", "mount_timeout_secs = 3\n")
	unused := write("unused.toml", "resolve_result_entry = 3\n")
	invalid := write("invalid.toml", "[background_fetch]\ndrop_policy = 'middle'\n")
	tests := []struct {
		args    []string
		wantErr bool
		want    string
	}{
		{[]string{"config", "check", clean}, false, "OK"},
		{[]string{"config", "check", "--strict", clean}, false, "OK"},
		{[]string{"config", "check", unknown}, true, "did you mean mount_timeout_sec"},
		{[]string{"config", "check", unused}, false, "resolve_result_entry: accepted but not acted on"},
		{[]string{"config", "check", "--strict", unused}, true, "resolve_result_entry"},
		{[]string{"config", "check", invalid}, true, "background_fetch.drop_policy"},
		{[]string{"config", "check", filepath.Join(dir, "missing.toml")}, true, "no such file"},
		// Without FILE, the --config path.
		{[]string{"--config", unknown, "config", "check"}, true, "mount_timeout_secs"},
		{[]string{"config", "check", clean, unused}, true, "at most one file"},
		{[]string{"config", "dump", "extra"}, true, "no arguments"},
	}
	for _, tc := range tests {
		var out bytes.Buffer
		err := run(context.Background(), tc.args, &out, io.Discard)
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err = %v, output %q", tc.args, err, out.String())
			continue
		}
		text := out.String()
		if err != nil {
			text += err.Error()
		}
		if !strings.Contains(text, tc.want) {
			t.Errorf("%q: output %q lacks %q", tc.args, text, tc.want)
		}
	}
}
