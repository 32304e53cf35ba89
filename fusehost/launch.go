package fusehost

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
)

// selfExe is the running executable, even once the file it was started
// from was replaced (an upgrade in place).
const selfExe = "/proc/self/exe"

// ExecutableID names the build of the running executable: the first 16 hex
// digits of the sha256 of its file, so that any other build (an upgrade)
// gets a host of its own.
func ExecutableID() (string, error) {
	f, err := os.Open(selfExe)
	if err != nil {
		return "", fmt.Errorf("open own executable: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash own executable: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// Command runs a host as a child of the daemon.
type Command struct {
	// GlobalArgs are the daemon's global flags (--root, --config,
	// --log-level, --log-format) placed before the subcommand.
	GlobalArgs []string
	// ID is passed as fuse-host --id.
	ID string
	// Stdout and Stderr are the daemon's own files, inherited as they are
	// (a pipe would tie the host to its reader).
	Stdout, Stderr *os.File
}

// envDropped are variables for the daemon only: systemd's notification
// socket and socket activation.
var envDropped = []string{"NOTIFY_SOCKET=", "LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES=", "LISTEN_PIDFDID="}

// Launcher starts `<own executable> <global flags> fuse-host --id ID` in a
// session of its own (signals to the daemon's process group never reach
// it), and reaps it when it ends.
func (c Command) Launcher() Launcher {
	return func(ctx context.Context) (<-chan error, error) {
		cmd := exec.Command(selfExe, append(slices.Clone(c.GlobalArgs), "fuse-host", "--id", c.ID)...)
		if name, err := os.Executable(); err == nil {
			cmd.Args[0] = strings.TrimSuffix(name, " (deleted)")
		}
		cmd.Stdout, cmd.Stderr = c.Stdout, c.Stderr
		for _, kv := range os.Environ() {
			if !slices.ContainsFunc(envDropped, func(p string) bool { return strings.HasPrefix(kv, p) }) {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("run %s fuse-host: %w", selfExe, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		return exited, nil
	}
}
