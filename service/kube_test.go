package service

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/fastsoci/soci-snapshotter/config"
)

// TestKubeCredentialsWired: [kubeconfig_keychain] enable_keychain starts a
// credentials source (here waiting for a kubeconfig that is not there, so
// answering nothing); without it there is none.
func TestKubeCredentialsWired(t *testing.T) {
	off, err := config.Parse([]byte(""))
	if err != nil {
		t.Fatal(err)
	}
	if kubeCredentials(t.Context(), off) != nil {
		t.Error("keychain started without enable_keychain")
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	on, err := config.Parse([]byte("[kubeconfig_keychain]\nenable_keychain = true\nkubeconfig_path = '" + path + "'\n"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	creds := kubeCredentials(ctx, on)
	if creds == nil {
		t.Fatal("no keychain with enable_keychain = true")
	}
	if u, s, err := creds("reg.example"); u != "" || s != "" || err != nil {
		t.Errorf("credentials before any secret: %q, %q, %v", u, s, err)
	}
}
