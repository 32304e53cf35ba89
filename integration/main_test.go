// Package integration runs the real binaries — containerd, the registry,
// nerdctl, ctr and our daemon — on loopback and checks what a user sees.
package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
)

// probeBinary is the static entrypoint of every test image, built once.
var probeBinary []byte

func TestMain(m *testing.M) {
	if err := buildProbe(); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func buildProbe() error {
	dir, err := os.MkdirTemp("", "probe")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "probe")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build probe: %v\n%s", err, b)
	}
	probeBinary, err = os.ReadFile(out)
	return err
}

// defaultDaemonConfig is the daemon config the tests run with unless they
// say otherwise.
const defaultDaemonConfig = `
[pull_modes.soci_v1]
  enable = false
`

// startEnv starts registry, daemon and containerd for one test; on failure
// it prints the tails of their logs. Everything is stopped at the end.
func startEnv(t *testing.T, daemonConfig string) *harness.Env {
	t.Helper()
	return startEnvWith(t, daemonConfig, harness.StartDaemon)
}

func dumpLogs(t *testing.T, e *harness.Env) {
	for name, path := range map[string]string{
		"daemon": e.Daemon.Log(), "containerd": e.Containerd.Log(), "registry": e.Registry.Log(),
	} {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		lines := strings.Split(string(data), "\n")
		if len(lines) > 60 {
			lines = lines[len(lines)-60:]
		}
		t.Logf("---- last lines of %s log ----\n%s", name, strings.Join(lines, "\n"))
	}
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
