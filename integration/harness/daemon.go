package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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

// Log is the path of the daemon's log.
func (d *Daemon) Log() string { return d.logPath }

// LogTail returns the last n lines of the daemon's log.
func (d *Daemon) LogTail(n int) string { return tailFile(d.logPath, n) }

// Exited reports whether the daemon's process has ended, and how.
func (d *Daemon) Exited() (bool, error) {
	if d.proc == nil {
		return true, nil
	}
	return d.proc.Exited()
}

// Kill ends the daemon's process group with SIGKILL, as a crash would,
// and waits for the process to be gone.
func (d *Daemon) Kill() {
	if d.proc == nil {
		return
	}
	if exited, _ := d.proc.Exited(); exited {
		return
	}
	_ = syscall.Kill(-d.proc.Pid(), syscall.SIGKILL)
	<-d.proc.done
}
