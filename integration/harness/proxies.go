package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// ProxySnapshotter is one proxy_plugins entry of containerd's config: a
// snapshotter named Name served on the unix socket Address.
type ProxySnapshotter struct {
	Name    string
	Address string
}

const containerdBaseConfig = `version = 3
root = %[1]q
state = %[2]q
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.sandbox.controller.v1.shim",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  level = %[5]q
`

const proxyPluginConfig = `
[proxy_plugins.%[1]q]
  type = "snapshot"
  address = %[2]q
  [proxy_plugins.%[1]q.exports]
    enable_remote_snapshot_annotations = "true"
`

const unpackConfig = `  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = %[1]q
    snapshotter = %[2]q
`

// containerdConfigFor is containerd's config with one proxy plugin per
// snapshotter, each also listed in the transfer service's unpack_config.
func containerdConfigFor(c *Containerd, logLevel string, snapshotters []ProxySnapshotter) string {
	var b strings.Builder
	fmt.Fprintf(&b, containerdBaseConfig, c.Root, c.State, c.Address, c.Address+".ttrpc", logLevel)
	for _, s := range snapshotters {
		fmt.Fprintf(&b, proxyPluginConfig, s.Name, s.Address)
	}
	platform := "linux/" + runtime.GOARCH
	b.WriteString("\n[plugins.\"io.containerd.transfer.v1.local\"]\n")
	fmt.Fprintf(&b, unpackConfig, platform, "overlayfs")
	for _, s := range snapshotters {
		fmt.Fprintf(&b, unpackConfig, platform, s.Name)
	}
	return b.String()
}

// StartContainerdProxies starts containerd (binaries in toolsBin) with its
// state under dir and one proxy snapshotter per entry of snapshotters.
// logLevel is containerd's log level ("" means info).
func StartContainerdProxies(ctx context.Context, toolsBin, dir, logLevel string, snapshotters []ProxySnapshotter) (*Containerd, error) {
	if logLevel == "" {
		logLevel = "info"
	}
	c := &Containerd{
		Address: filepath.Join(dir, "containerd.sock"),
		Root:    filepath.Join(dir, "root"),
		State:   filepath.Join(dir, "state"),
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create containerd dir: %w", err)
	}
	cfg := filepath.Join(dir, "config.toml")
	if err := launch(ctx, c, toolsBin, dir, cfg, containerdConfigFor(c, logLevel, snapshotters)); err != nil {
		return nil, err
	}
	return c, nil
}

// Pid is containerd's process id.
func (c *Containerd) Pid() int { return c.proc.Pid() }

// Pid is the daemon's process id, 0 when it is not started.
func (d *Daemon) Pid() int {
	if d.proc == nil {
		return 0
	}
	return d.proc.Pid()
}

// ProcStats is what /proc says about a process's resource use.
type ProcStats struct {
	PeakRSS    int64   // bytes, VmHWM
	CPUSeconds float64 // user + system
}

// ReadProcStats reads the peak RSS (VmHWM of /proc/PID/status) and the CPU
// time (utime + stime of /proc/PID/stat) of a live process.
func ReadProcStats(pid int) (ProcStats, error) {
	var s ProcStats
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				s.PeakRSS = kb << 10
			}
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	// Fields after the command name (which may hold spaces) start at state (field 3).
	text := string(stat)
	i := strings.LastIndexByte(text, ')')
	if i < 0 {
		return s, fmt.Errorf("parse stat of pid %d", pid)
	}
	f := strings.Fields(text[i+1:])
	if len(f) < 13 {
		return s, fmt.Errorf("parse stat of pid %d: %d fields", pid, len(f))
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, _ := strconv.ParseInt(f[12], 10, 64) // field 15
	const clockTicks = 100                      // USER_HZ on Linux
	s.CPUSeconds = float64(utime+stime) / clockTicks
	return s, nil
}
