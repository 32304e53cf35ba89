package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Containerd is a containerd daemon with a proxy snapshotter named "soci".
type Containerd struct {
	Address string
	Root    string
	State   string
	proc    *Process
}

const containerdConfig = `version = 3
root = %[1]q
state = %[2]q
disabled_plugins = [%[7]s]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  level = "debug"

[proxy_plugins.soci]
  type = "snapshot"
  address = %[5]q
  [proxy_plugins.soci.exports]
    enable_remote_snapshot_annotations = "true"

[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = %[6]q
    snapshotter = "overlayfs"
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = %[6]q
    snapshotter = "soci"
%[8]s`

// criPlugins serve the CRI API; disabled unless ContainerdOptions.CRI.
var criPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.images",
	"io.containerd.cri.v1.runtime",
	"io.containerd.podsandbox.controller.v1.podsandbox",
	"io.containerd.sandbox.controller.v1.shim",
}

// criConfig makes CRI pulls go through snapshotter %[1]q with the remote
// snapshot annotations, by containerd's client pull (which
// disable_snapshot_annotations = false selects in containerd 2.2 anyway).
// %[2]s is the pinned images table, %[3]s the runtime handlers.
const criConfig = `
[plugins."io.containerd.cri.v1.images"]
  snapshotter = %[1]q
  disable_snapshot_annotations = false
  use_local_image_pull = true
%[2]s
[plugins."io.containerd.cri.v1.runtime"]
  # The test machine lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj
  # (-998) cannot be set below containerd's own.
  restrict_oom_score_adj = true
%[3]s`

// criHandlerConfig is a runc runtime handler %[1]q whose containers and
// images use snapshotter %[2]q: the runtime's snapshotter serves container
// creation, the images plugin's runtime_platforms entry the pulls made for
// a pod of that handler.
const criHandlerConfig = `
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%[1]q]
  runtime_type = "io.containerd.runc.v2"
  snapshotter = %[2]q
[plugins."io.containerd.cri.v1.images".runtime_platforms.%[1]q]
  snapshotter = %[2]q
`

// ContainerdOptions change how StartContainerdWith configures containerd.
type ContainerdOptions struct {
	// CRI enables the CRI plugins (ImageService and RuntimeService on
	// containerd's socket, namespace "k8s.io"), pulling into "soci". The
	// CRI ImageService is served by the grpc.v1.cri plugin, which needs the
	// runtime and sandbox controller plugins too, not the images plugin
	// alone. NRI stays disabled. Pod sandboxes get no CNI configuration:
	// only host-network pods can run.
	CRI bool
	// CRISnapshotter is the CRI plugin's default snapshotter; "" is "soci".
	CRISnapshotter string
	// SandboxImage is the pinned "sandbox" image (the pause image) pods
	// run; "" leaves containerd's default (which needs the internet).
	SandboxImage string
	// Handlers maps extra CRI runtime handlers (runc) to their snapshotter:
	// the per-RuntimeClass form.
	Handlers map[string]string
}

// criText is the CRI part of containerd's config for opts.
func criText(opts ContainerdOptions) string {
	snapshotter := opts.CRISnapshotter
	if snapshotter == "" {
		snapshotter = "soci"
	}
	pinned := ""
	if opts.SandboxImage != "" {
		pinned = fmt.Sprintf("  [plugins.\"io.containerd.cri.v1.images\".pinned_images]\n    sandbox = %q\n", opts.SandboxImage)
	}
	names := make([]string, 0, len(opts.Handlers))
	for name := range opts.Handlers {
		names = append(names, name)
	}
	sort.Strings(names)
	var handlers strings.Builder
	for _, name := range names {
		fmt.Fprintf(&handlers, criHandlerConfig, name, opts.Handlers[name])
	}
	return fmt.Sprintf(criConfig, snapshotter, pinned, handlers.String())
}

// StartContainerd starts containerd (binaries in toolsBin) with its state
// under dir and a proxy snapshotter "soci" at sociAddress.
func StartContainerd(ctx context.Context, toolsBin, dir, sociAddress string) (*Containerd, error) {
	return StartContainerdWith(ctx, toolsBin, dir, sociAddress, ContainerdOptions{})
}

// StartContainerdWith is StartContainerd with options.
func StartContainerdWith(ctx context.Context, toolsBin, dir, sociAddress string, opts ContainerdOptions) (*Containerd, error) {
	c := &Containerd{
		Address: filepath.Join(dir, "containerd.sock"),
		Root:    filepath.Join(dir, "root"),
		State:   filepath.Join(dir, "state"),
	}
	cfg := filepath.Join(dir, "config.toml")
	platform := "linux/" + runtime.GOARCH
	disabled := []string{"io.containerd.nri.v1.nri"}
	extra := ""
	if opts.CRI {
		extra = criText(opts)
	} else {
		disabled = append(append([]string{}, criPlugins...), disabled...)
	}
	quoted := make([]string, len(disabled))
	for i, p := range disabled {
		quoted[i] = strconv.Quote(p)
	}
	text := fmt.Sprintf(containerdConfig, c.Root, c.State, c.Address, c.Address+".ttrpc", sociAddress, platform,
		strings.Join(quoted, ", "), extra)
	if err := launch(ctx, c, toolsBin, dir, cfg, text); err != nil {
		return nil, err
	}
	return c, nil
}

// launch writes containerd's config text to cfg, starts containerd with it
// and waits until it answers.
func launch(ctx context.Context, c *Containerd, toolsBin, dir, cfg, text string) error {
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		return fmt.Errorf("write containerd config: %w", err)
	}
	env := []string{"PATH=" + toolsBin + ":" + os.Getenv("PATH")}
	p, err := StartProcess("containerd", filepath.Join(dir, "containerd.log"), env,
		filepath.Join(toolsBin, "containerd"), "--config", cfg)
	if err != nil {
		return err
	}
	c.proc = p
	ctr := filepath.Join(toolsBin, "ctr")
	err = waitFor(ctx, p, 30*time.Second, func() error {
		_, err := Run(ctx, nil, ctr, "--address", c.Address, "version")
		return err
	})
	if err != nil {
		p.Stop(5 * time.Second)
		return fmt.Errorf("start containerd: %w", err)
	}
	return nil
}

// Stop stops containerd.
func (c *Containerd) Stop() error {
	return stoppedBySignal(c.proc.Stop(10 * time.Second))
}

// Log is the path of containerd's log.
func (c *Containerd) Log() string { return c.proc.LogPath }
