package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Crictl runs the crictl binary against a CRI runtime service (containerd's
// socket) and an image service (containerd's, or the daemon's CRI proxy as
// kubelet's --image-service-endpoint would name it).
type Crictl struct {
	Bin    string
	Config string // crictl.yaml with both endpoints and the timeout
}

// NewCrictl writes dir/crictl.yaml naming the endpoints (unix socket paths).
func NewCrictl(bin, dir, runtimeSocket, imageSocket string) (*Crictl, error) {
	cfg := filepath.Join(dir, "crictl.yaml")
	text := fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\ndebug: false\npull-image-on-create: false\n",
		runtimeSocket, imageSocket)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("write crictl config: %w", err)
	}
	return &Crictl{Bin: bin, Config: cfg}, nil
}

// Run runs crictl with args and returns its standard output, trimmed; the
// error carries standard error.
func (c *Crictl) Run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.Bin, append([]string{"--config", c.Config}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return stdout.String(), fmt.Errorf("crictl %s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
		}
		return "", fmt.Errorf("crictl %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(stdout.String()), nil
}

// KillCgroupMembers SIGKILLs the processes whose cgroup path ends in one
// of ids (CRI pod sandboxes and containers run in /k8s.io/<id> with the
// cgroupfs driver).
func KillCgroupMembers(ids []string) {
	if len(ids) == 0 {
		return
	}
	entries, _ := os.ReadDir("/proc")
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cgroup"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if slices.ContainsFunc(ids, func(id string) bool { return strings.HasSuffix(line, "/"+id) }) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				break
			}
		}
	}
}
