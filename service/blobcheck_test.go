package service

import (
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/config"
)

// TestBlobValidIntervalWired: [blob] valid_interval bounds the reuse of
// blob storage URLs, check_always (or a negative interval) disables it.
func TestBlobValidIntervalWired(t *testing.T) {
	for doc, want := range map[string]time.Duration{
		"":                              time.Minute,
		"[blob]\nvalid_interval = 5\n":  5 * time.Second,
		"[blob]\ncheck_always = true\n": -1,
		"[blob]\nvalid_interval = -1\n": -1,
		"[blob]\nvalid_interval = 0\n":  time.Minute,
	} {
		cfg, err := config.Parse([]byte(doc))
		if err != nil {
			t.Fatalf("Parse(%q): %v", doc, err)
		}
		if got := registryOptions(cfg).DirectURLValidFor; got != want {
			t.Errorf("Parse(%q): DirectURLValidFor = %s, want %s", doc, got, want)
		}
	}
}

// TestAuthTTLWired: [resolver] auth_client_ttl_sec reaches the registry
// client (3600 by default; negative: never).
func TestAuthTTLWired(t *testing.T) {
	for doc, want := range map[string]time.Duration{
		"":                                       time.Hour,
		"[resolver]\nauth_client_ttl_sec = 60\n": time.Minute,
		"[resolver]\nauth_client_ttl_sec = -1\n": -time.Second,
	} {
		cfg, err := config.Parse([]byte(doc))
		if err != nil {
			t.Fatalf("Parse(%q): %v", doc, err)
		}
		if got := registryOptions(cfg).AuthTTL; got != want {
			t.Errorf("Parse(%q): AuthTTL = %s, want %s", doc, got, want)
		}
	}
}
