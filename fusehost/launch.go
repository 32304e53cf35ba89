package fusehost

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
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

// ExecutableID names the build of the running executable and the settings
// a host runs with: the first 16 hex digits of the sha256 of the build's
// identity followed by settings (the daemon's effective configuration).
// Any other build (an upgrade) or configuration gets a host of its own,
// which serves the new mounts, while the older host keeps serving its
// layers with what it was started with until they are unmounted.
//
// The build's identity is the Go build ID the linker writes into the
// executable (a hash of everything that went into the link, -X flags
// included), read from one ELF note; an executable without it is hashed
// whole, which takes about 0.1 s for this binary and is start-up time.
func ExecutableID(settings []byte) (string, error) {
	build, err := goBuildID(selfExe)
	if err != nil {
		if build, err = fileDigest(selfExe); err != nil {
			return "", err
		}
	}
	h := sha256.New()
	h.Write(build)
	h.Write(settings)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// goBuildID returns the Go build ID note (".note.go.buildid") of the ELF
// executable at path.
func goBuildID(path string) ([]byte, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read own executable: %w", err)
	}
	defer f.Close()
	sec := f.Section(".note.go.buildid")
	if sec == nil {
		return nil, errors.New("own executable has no Go build ID")
	}
	note, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read own build ID: %w", err)
	}
	// namesz, descsz, type (4 bytes each), the name "Go\0\0", the ID.
	const head = 16
	if len(note) <= head || string(note[12:14]) != "Go" {
		return nil, errors.New("own executable: malformed Go build ID note")
	}
	return note[head:], nil
}

// fileDigest is the sha256 of the file at path.
func fileDigest(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open own executable: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("hash own executable: %w", err)
	}
	return h.Sum(nil), nil
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
