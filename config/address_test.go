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
		// Not loopback: loads (upstream files use them), not served.
		":6060":                      true,
		"0.0.0.0:6060":               true,
		"[::]:6060":                  true,
		"10.0.0.1:6060":              true,
		"[fe80::1%lo]:6060":          true,
		"example.com:6060":           true,
		"localhost.example.com:6060": true,
		"127.0.0.1":                  false,
		"debug.sock":                 false,
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

func TestPublicDebugAddressLoadsButIsNotServed(t *testing.T) {
	for addr, public := range map[string]bool{
		"0.0.0.0:6060": true, ":6060": true, "[::1%lo]:6060": true, "example.com:6060": true,
		"127.0.0.1:6060": false, "localhost:6060": false, "/run/soci/debug.sock": false,
	} {
		cfg, err := Parse([]byte("# pprof\ndebug_address = '" + addr + "'\n"))
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		var named bool
		for _, u := range UnusedKeys() {
			if u.Key == "debug_address" && u.Ignored(cfg) {
				named = true
			}
		}
		if named != public {
			t.Errorf("%s: reported as not served = %v, want %v", addr, named, public)
		}
	}
}
