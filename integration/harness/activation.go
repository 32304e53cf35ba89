package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"
)

// DaemonStarter starts a prepared daemon; (*Daemon).Start is one.
type DaemonStarter func(ctx context.Context, d *Daemon) error

// StartDaemon is the DaemonStarter of Start: (*Daemon).Start.
func StartDaemon(ctx context.Context, d *Daemon) error { return d.Start(ctx) }

// StartWith is Start with the daemon started by start instead of
// (*Daemon).Start; containerd is pointed at the daemon's Address as start
// leaves it.
func StartWith(ctx context.Context, tools Tools, dir, daemonConfig string, start DaemonStarter) (*Env, error) {
	e := &Env{Dir: dir, Tools: tools, Namespace: "soci-test"}
	err := func() error {
		for _, sub := range []string{"registry", "daemon", "containerd", "nerdctl"} {
			if err := os.MkdirAll(filepath.Join(e.Dir, sub), 0o755); err != nil {
				return fmt.Errorf("create %s dir: %w", sub, err)
			}
		}
		var err error
		if e.Registry, err = StartRegistry(ctx, filepath.Join(tools.Bin, "registry"), filepath.Join(dir, "registry")); err != nil {
			return err
		}
		if e.Daemon, err = NewDaemon(filepath.Join(tools.Ours, "soci-snapshotter-grpc"), filepath.Join(dir, "daemon"), daemonConfig); err != nil {
			return err
		}
		if err := start(ctx, e.Daemon); err != nil {
			return err
		}
		e.Containerd, err = StartContainerd(ctx, tools.Bin, filepath.Join(dir, "containerd"), e.Daemon.Address)
		return err
	}()
	if err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// SocketActivator finds systemd-socket-activate, which ships with systemd.
func SocketActivator() (string, error) {
	if p, err := exec.LookPath("systemd-socket-activate"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/lib/systemd/systemd-socket-activate", "/lib/systemd/systemd-socket-activate"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("systemd-socket-activate not found (it ships with systemd)")
}

// StartSocketActivated starts the daemon with --address fd:// the way a
// systemd .socket unit does: systemd-socket-activate listens on d.Address
// and, on the first connection, executes the daemon with the listening
// socket as fd 3 and LISTEN_FDS/LISTEN_PID set.
func (d *Daemon) StartSocketActivated(ctx context.Context, activator string) error {
	if err := os.MkdirAll(filepath.Dir(d.Address), 0o700); err != nil {
		return fmt.Errorf("create socket directory: %w", err)
	}
	// The activator passes its children only a few variables of its own
	// environment (PATH, HOME, ...): hand d.Env over explicitly.
	args := []string{"--listen=" + d.Address}
	for _, kv := range d.environ() {
		args = append(args, "--setenv="+kv)
	}
	args = append(append(args, d.bin), d.args("fd://")...)
	return d.startAndDial(ctx, activator, args)
}

// StartFDWithoutSocket starts the daemon with --address fd:// and no socket
// passed, as when a unit written for socket activation runs the daemon
// directly. The daemon then serves on fallback (its default socket), which
// becomes d.Address.
func (d *Daemon) StartFDWithoutSocket(ctx context.Context, fallback string) error {
	d.Address = fallback
	d.Env = append(d.Env, "LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES=")
	return d.startAndDial(ctx, d.bin, d.args("fd://"))
}

// args are the daemon's arguments with --address address: only flags every
// soci-snapshotter-grpc has (the bench runs other builds with them too).
func (d *Daemon) args(address string) []string {
	return []string{"--address", address, "--root", d.Root, "--config", d.Config, "--log-level", "debug"}
}

// environ is d.Env plus the log format, set through the environment
// (SOCI_SNAPSHOTTER_LOG_FORMAT), which builds without that setting ignore.
func (d *Daemon) environ() []string {
	env := slices.Clone(d.Env)
	if d.LogFormat != "" {
		env = append(env, "SOCI_SNAPSHOTTER_LOG_FORMAT="+d.LogFormat)
	}
	return env
}

// startAndDial runs bin args as the daemon's process and waits until
// d.Address accepts connections.
func (d *Daemon) startAndDial(ctx context.Context, bin string, args []string) error {
	p, err := StartProcess("soci-snapshotter-grpc", d.logPath, d.environ(), bin, args...)
	if err != nil {
		return err
	}
	d.proc = p
	err = waitFor(ctx, p, 20*time.Second, func() error {
		c, err := net.DialTimeout("unix", d.Address, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		p.Stop(5 * time.Second)
		return fmt.Errorf("start daemon: %w", err)
	}
	return nil
}
