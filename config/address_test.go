package config

import (
	"strings"
	"testing"
)

func TestValidateDebugAddress(t *testing.T) {
	for addr, ok := range map[string]bool{
		"":                            true,
		"/run/soci/debug.sock":        true,
		"unix:///run/soci/debug.sock": true,
		"127.0.0.1:6060":              true,
		"127.1.2.3:6060":              true,
		"[::1]:6060":                  true,
		"[::ffff:127.0.0.1]:6060":     true,
		"localhost:6060":              true,
		"LocalHost:6060":              true,
		":6060":                       false,
		"0.0.0.0:6060":                false,
		"[::]:6060":                   false,
		"10.0.0.1:6060":               false,
		"[fe80::1%lo]:6060":           false,
		"[::1%lo]:6060":               false,
		"example.com:6060":            false,
		"localhost.example.com:6060":  false,
		"127.0.0.1":                   false,
		"debug.sock":                  false,
	} {
		cfg := Default()
		cfg.DebugAddress = addr
		err := cfg.Validate()
		if ok && err != nil {
			t.Errorf("debug_address %q refused: %v", addr, err)
		}
		if !ok && (err == nil || !strings.Contains(err.Error(), "debug_address")) {
			t.Errorf("debug_address %q: got %v, want an error naming debug_address", addr, err)
		}
	}
}

func TestParseRefusesPublicDebugAddress(t *testing.T) {
	_, err := Parse([]byte("# pprof\ndebug_address = '0.0.0.0:6060'\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2: debug_address") || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("got %v, want an error naming line 2, debug_address and loopback", err)
	}
}
