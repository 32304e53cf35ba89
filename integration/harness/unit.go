package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// UnitCgroup is a cgroup standing in for a systemd service's control
// group: the daemon is started in it, everything it starts (FUSE hosts
// too, whatever session they are in) stays in it, and stopping the unit
// with KillMode=control-group means signalling every process in it.
// systemd need not be running.
type UnitCgroup struct {
	// Dir is the cgroup's directory.
	Dir string
}

// NewUnitCgroup creates a cgroup named name (plus a unique suffix): in the
// unified hierarchy when /sys/fs/cgroup is cgroup2, else in the v1 pids
// hierarchy (any hierarchy tracks processes the same way).
func NewUnitCgroup(name string) (*UnitCgroup, error) {
	base := "/sys/fs/cgroup"
	var st syscall.Statfs_t
	if err := syscall.Statfs(base, &st); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", base, err)
	}
	const cgroup2Magic = 0x63677270
	if st.Type != cgroup2Magic {
		base = filepath.Join(base, "pids")
	}
	dir := filepath.Join(base, fmt.Sprintf("%s-%d-%d", name, os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	return &UnitCgroup{Dir: dir}, nil
}

// Procs lists the processes in the cgroup.
func (u *UnitCgroup) Procs() ([]int, error) {
	data, err := os.ReadFile(filepath.Join(u.Dir, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("read cgroup.procs: %w", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Signal sends sig to every process in the cgroup and returns their pids.
func (u *UnitCgroup) Signal(sig syscall.Signal) ([]int, error) {
	pids, err := u.Procs()
	for _, pid := range pids {
		if kerr := syscall.Kill(pid, sig); kerr != nil && !errors.Is(kerr, syscall.ESRCH) {
			err = errors.Join(err, fmt.Errorf("signal pid %d: %w", pid, kerr))
		}
	}
	return pids, err
}

// WaitEmpty polls until no process is left in the cgroup, at most timeout.
func (u *UnitCgroup) WaitEmpty(ctx context.Context, timeout time.Duration) error {
	return waitFor(ctx, nil, timeout, func() error {
		pids, err := u.Procs()
		if err != nil {
			return err
		}
		if len(pids) > 0 {
			return fmt.Errorf("processes left in %s: %v", u.Dir, pids)
		}
		return nil
	})
}

// Remove kills what is left in the cgroup and removes it.
func (u *UnitCgroup) Remove() error {
	if _, err := u.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := u.WaitEmpty(ctx, 10*time.Second); err != nil {
		return err
	}
	if err := os.Remove(u.Dir); err != nil {
		return fmt.Errorf("remove cgroup: %w", err)
	}
	return nil
}

// StartInCgroup starts the daemon as a unit's ExecStart runs: inside u from
// its first instruction (a shell writes its own pid into the cgroup, then
// executes the daemon, which keeps that pid), then waits for the socket.
func (d *Daemon) StartInCgroup(ctx context.Context, u *UnitCgroup) error {
	args := append([]string{"-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(u.Dir, "cgroup.procs"), d.bin}, d.args(d.Address)...)
	return d.startAndDial(ctx, "/bin/sh", args)
}
