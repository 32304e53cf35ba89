package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildDaemon builds cmd/soci-snapshotter-grpc of this checkout into
// dir/soci-snapshotter-grpc with version stamped into it, and returns the
// path. Another version string gives another executable: a different build,
// as an upgrade brings.
func BuildDaemon(ctx context.Context, dir, version string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "soci-snapshotter-grpc")
	const pkg = "github.com/fastsoci/soci-snapshotter/internal/version"
	ldflags := fmt.Sprintf("-X %s.Version=%s -X %s.Revision=%s", pkg, version, pkg, version)
	cmd := exec.CommandContext(ctx, "go", "build", "-ldflags", ldflags, "-o", out, "./cmd/soci-snapshotter-grpc")
	cmd.Dir = root
	cmd.Env = os.Environ()
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build soci-snapshotter-grpc %s: %w\n%s", version, err, b)
	}
	return out, nil
}
