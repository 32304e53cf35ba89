package integration

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// TestAuthHtpasswd: a registry that wants basic auth (htpasswd) serves a
// lazily loaded image; the daemon and nerdctl find the credentials in the
// docker config.json named by DOCKER_CONFIG, and the password never shows
// up in the daemon's log.
func TestAuthHtpasswd(t *testing.T) {
	const user, password = "soci-user", "pw-Zq83xLk0vN"
	dockerConfig := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dockerConfig) // inherited by the daemon and nerdctl
	e := startEnv(t, defaultDaemonConfig)
	ctx := testContext(t, 5*time.Minute)
	img := newLayeredImage()
	// Pushed to the open registry; an authenticated registry on the same
	// storage serves it.
	pushV2(t, e, "lazy/auth:latest", buildImage(t, img.spec), sociimage.Options{SpanSize: 1 << 20})
	dir := t.TempDir()
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := harness.WriteHtpasswd(htpasswd, user, password); err != nil {
		t.Fatal(err)
	}
	reg, err := harness.StartRegistryWith(ctx, filepath.Join(e.Tools.Bin, "registry"), dir,
		harness.RegistryOptions{Storage: e.Registry.Storage, Htpasswd: htpasswd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Stop() })
	ref := reg.Host + "/lazy/auth:latest"

	// Without credentials the pull is refused.
	if _, err := e.Nerdctl(ctx, "--snapshotter", "soci", "pull", ref); err == nil {
		t.Fatal("pull without credentials succeeded")
	}
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	cfg := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, reg.Host, auth)
	if err := os.WriteFile(filepath.Join(dockerConfig, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	checkLazyRun(t, ctx, e, ref, img, 3)
	checkAuthenticatedRun(t, e, reg, []string{password, auth})
}

// checkAuthenticatedRun checks what a lazily loaded run from a registry
// that requires credentials leaves behind (the caller has checked the file
// contents and the FUSE mounts): the registry served blob bytes, and the
// daemon log holds none of the secrets. The log is the state here: the
// invariant is that credentials never reach it.
func checkAuthenticatedRun(t *testing.T, e *harness.Env, reg *harness.Registry, secrets []string) {
	t.Helper()
	served, err := harness.RegistryBytesServed(reg.Log())
	if err != nil {
		t.Fatal(err)
	}
	if served == 0 {
		t.Error("the authenticated registry served no blob bytes")
	}
	logs, err := os.ReadFile(e.Daemon.Log())
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range secrets {
		if strings.Contains(string(logs), secret) {
			t.Errorf("daemon log contains a credential")
		}
	}
}
