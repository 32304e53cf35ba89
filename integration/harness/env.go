package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
)

// Tools says where the binaries are: the pinned third-party tools
// (containerd, ctr, registry, nerdctl) and ours.
type Tools struct {
	Bin  string // containerd, ctr, containerd-shim-runc-v2, registry, nerdctl
	Ours string // soci-snapshotter-grpc, soci
}

// ToolsFromEnv reads SOCI_TOOLS and SOCI_BIN, defaulting to .tools/bin and
// bin/ at the repository root, and checks that every binary is there.
func ToolsFromEnv() (Tools, error) {
	root, err := repoRoot()
	if err != nil {
		return Tools{}, err
	}
	t := Tools{Bin: os.Getenv("SOCI_TOOLS"), Ours: os.Getenv("SOCI_BIN")}
	if t.Bin == "" {
		t.Bin = filepath.Join(root, ".tools", "bin")
	}
	if t.Ours == "" {
		t.Ours = filepath.Join(root, "bin")
	}
	for _, p := range []string{
		filepath.Join(t.Bin, "containerd"), filepath.Join(t.Bin, "ctr"),
		filepath.Join(t.Bin, "containerd-shim-runc-v2"), filepath.Join(t.Bin, "registry"),
		filepath.Join(t.Bin, "nerdctl"), filepath.Join(t.Ours, "soci-snapshotter-grpc"),
	} {
		if _, err := os.Stat(p); err != nil {
			return Tools{}, fmt.Errorf("missing %s (run `make deps build`): %w", p, err)
		}
	}
	return t, nil
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (go.mod) not found above the working directory")
		}
		dir = parent
	}
}

// Env is a registry, our daemon and containerd, all under Dir.
type Env struct {
	Dir        string
	Tools      Tools
	Registry   *Registry
	Daemon     *Daemon
	Containerd *Containerd
	Namespace  string
}

// Start brings up registry, daemon (with daemonConfig as its config.toml) and
// containerd under dir. On error everything started is stopped again.
func Start(ctx context.Context, tools Tools, dir, daemonConfig string) (*Env, error) {
	return StartWith(ctx, tools, dir, daemonConfig, StartDaemon)
}

// Nerdctl runs nerdctl against this containerd and namespace.
func (e *Env) Nerdctl(ctx context.Context, args ...string) (string, error) {
	base := []string{
		"--address", e.Containerd.Address, "--namespace", e.Namespace,
		"--data-root", filepath.Join(e.Dir, "nerdctl"), "--cgroup-manager", "cgroupfs",
		"--insecure-registry",
	}
	return Run(ctx, e.toolEnv(), filepath.Join(e.Tools.Bin, "nerdctl"), append(base, args...)...)
}

// Ctr runs ctr against this containerd and namespace.
func (e *Env) Ctr(ctx context.Context, args ...string) (string, error) {
	base := []string{"--address", e.Containerd.Address, "--namespace", e.Namespace}
	return Run(ctx, e.toolEnv(), filepath.Join(e.Tools.Bin, "ctr"), append(base, args...)...)
}

func (e *Env) toolEnv() []string {
	nerdctlToml := filepath.Join(e.Dir, "nerdctl", "nerdctl.toml")
	_ = os.WriteFile(nerdctlToml, nil, 0o644)
	return []string{
		"PATH=" + e.Tools.Ours + ":" + e.Tools.Bin + ":" + os.Getenv("PATH"),
		"NERDCTL_TOML=" + nerdctlToml,
	}
}

// Close stops containerd, the daemon and the registry, then removes what
// they may have left: the daemon's FUSE hosts (cleanup), containers' shims
// and mounts under Dir.
func (e *Env) Close() error {
	var errs []error
	if e.Containerd != nil {
		errs = append(errs, e.Containerd.Stop())
	}
	killShims(e.Dir)
	if e.Daemon != nil {
		errs = append(errs, e.Daemon.Stop(), e.Daemon.Cleanup())
	}
	if e.Registry != nil {
		errs = append(errs, e.Registry.Stop())
	}
	errs = append(errs, UnmountUnder(e.Dir))
	return errors.Join(errs...)
}

// Mounts returns the mount points under dir with their filesystem types.
func Mounts(dir string) (map[string]string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	out := make(map[string]string, len(infos))
	for _, m := range infos {
		out[m.Mountpoint] = m.FSType
	}
	return out, nil
}

// UnmountUnder lazily unmounts every mount below dir, deepest first.
func UnmountUnder(dir string) error {
	mounts, err := Mounts(dir)
	if err != nil {
		return err
	}
	points := make([]string, 0, len(mounts))
	for p := range mounts {
		points = append(points, p)
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// killShims kills containerd shims whose command line names a path under dir.
func killShims(dir string) {
	for pid, args := range processArgs() {
		s := strings.Join(args, " ")
		if strings.Contains(s, "containerd-shim") && strings.Contains(s, dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	time.Sleep(100 * time.Millisecond)
}
