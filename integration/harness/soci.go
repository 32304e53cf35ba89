package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Soci runs our soci CLI against this containerd and namespace with its
// root under Dir/soci-cli. It returns stdout; stderr is in the error.
func (e *Env) Soci(ctx context.Context, args ...string) (string, error) {
	base := []string{"--address", e.Containerd.Address, "--namespace", e.Namespace,
		"--root", filepath.Join(e.Dir, "soci-cli")}
	bin := filepath.Join(e.Tools.Ours, "soci")
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	cmd.Env = append(os.Environ(), e.toolEnv()...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("soci %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
