package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// Daemon is our soci-snapshotter-grpc.
type Daemon struct {
	Address string
	Root    string
	Config  string
	// Env is added to the daemon's environment (e.g. DOCKER_CONFIG=dir).
	Env []string
	// LogFormat is passed as SOCI_SNAPSHOTTER_LOG_FORMAT: "text" (NewDaemon's choice, so
	// that tests read logrus's key=value lines), or "" for the daemon's
	// default, JSON.
	LogFormat string
	bin       string
	logPath   string
	proc      *Process
}

// NewDaemon prepares a daemon whose socket, root and config live under dir.
// configTOML is written as its config file.
func NewDaemon(bin, dir, configTOML string) (*Daemon, error) {
	d := &Daemon{
		Address:   filepath.Join(dir, "run", "soci.sock"),
		Root:      filepath.Join(dir, "root"),
		Config:    filepath.Join(dir, "config.toml"),
		bin:       bin,
		logPath:   filepath.Join(dir, "daemon.log"),
		LogFormat: "text",
	}
	if err := os.WriteFile(d.Config, []byte(configTOML), 0o644); err != nil {
		return nil, fmt.Errorf("write daemon config: %w", err)
	}
	return d, nil
}

// Start starts the daemon and waits until its socket accepts connections.
func (d *Daemon) Start(ctx context.Context) error {
	return d.startAndDial(ctx, d.bin, d.args(d.Address))
}

// Stop sends SIGTERM and returns how the daemon exited.
func (d *Daemon) Stop() error {
	if d.proc == nil {
		return nil
	}
	return d.proc.Stop(40 * time.Second)
}

// Kill sends SIGKILL to the daemon (not to its FUSE host, which runs in a
// session of its own) and waits until it is gone.
func (d *Daemon) Kill() error {
	if d.proc == nil {
		return nil
	}
	return d.proc.Kill()
}

// Cleanup runs `soci-snapshotter-grpc cleanup` on the daemon's root: every
// FUSE host the daemon started is shut down, its layers unmounted. The
// daemon must be stopped first. Hosts outlive the daemon on purpose, so
// every test that starts a daemon runs this when it ends (Env.Close does).
func (d *Daemon) Cleanup() error {
	if _, err := os.Stat(filepath.Join(d.Root, "fusehost")); err != nil {
		return nil // no host ever ran there (or a build without hosts)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := Run(ctx, nil, d.bin, "--root", d.Root, "--log-level", "warn", "cleanup"); err != nil {
		return fmt.Errorf("clean up FUSE hosts: %w", err)
	}
	return nil
}

// HostPids lists the pids of the FUSE hosts running on the daemon's root.
func (d *Daemon) HostPids() []int {
	var pids []int
	for pid, args := range processArgs() {
		if slices.Contains(args, "fuse-host") && slices.Contains(args, d.Root) {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids
}

// HostPid is the pid of the FUSE host serving the daemon's layers (where
// registry data is parsed and held), 0 when none runs.
func (d *Daemon) HostPid() int {
	if pids := d.HostPids(); len(pids) == 1 {
		return pids[0]
	}
	return 0
}

// Log is the path of the daemon's log.
func (d *Daemon) Log() string { return d.logPath }

// LogTail returns the last n lines of the daemon's log.
func (d *Daemon) LogTail(n int) string { return tailFile(d.logPath, n) }

// Binary is the executable the daemon runs.
func (d *Daemon) Binary() string { return d.bin }

// StartBinary starts the daemon from another executable, bin (an upgrade
// or a downgrade); later Starts run bin too.
func (d *Daemon) StartBinary(ctx context.Context, bin string) error {
	d.bin = bin
	return d.Start(ctx)
}

// Signal sends sig to the daemon's main process only, not to its process
// group or to processes it started, as systemd does with KillMode=process.
func (d *Daemon) Signal(sig syscall.Signal) error {
	if d.proc == nil {
		return fmt.Errorf("daemon not started")
	}
	if exited, _ := d.proc.Exited(); exited {
		return fmt.Errorf("daemon (pid %d) already exited", d.proc.Pid())
	}
	return syscall.Kill(d.proc.Pid(), sig)
}

// WaitExit waits up to timeout for the daemon's main process to end and
// returns how it ended (nil for exit status 0).
func (d *Daemon) WaitExit(timeout time.Duration) error {
	if d.proc == nil {
		return nil
	}
	return d.proc.Wait(timeout)
}

// Exited reports whether the daemon's process has ended, and how.
func (d *Daemon) Exited() (bool, error) {
	if d.proc == nil {
		return true, nil
	}
	return d.proc.Exited()
}
