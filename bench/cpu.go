package bench

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of CPU times in /proc on Linux.
const clockTicks = 100

// CPUSplit is CPU time (user+sys, seconds) of one node's processes, by
// what they are. Each process counts with the CPU of the children it has
// reaped (cutime+cstime), so runc, reaped by the shim, counts in Shim.
type CPUSplit struct {
	Containerd float64 `json:"containerd"`
	// Shim is the runc shims with what they reaped (runc, its hooks) and
	// the container's own processes.
	Shim    float64 `json:"shim"`
	Daemon  float64 `json:"daemon"`
	Host    float64 `json:"fuse_host"`
	Nerdctl float64 `json:"nerdctl"`
	Other   float64 `json:"other"`
}

// Total is the CPU time of every process.
func (c CPUSplit) Total() float64 {
	return c.Containerd + c.Shim + c.Daemon + c.Host + c.Nerdctl + c.Other
}

// Ours is the CPU time of our daemon and its FUSE hosts.
func (c CPUSplit) Ours() float64 { return c.Daemon + c.Host }

// Add returns c + d.
func (c CPUSplit) Add(d CPUSplit) CPUSplit {
	return CPUSplit{c.Containerd + d.Containerd, c.Shim + d.Shim, c.Daemon + d.Daemon, c.Host + d.Host,
		c.Nerdctl + d.Nerdctl, c.Other + d.Other}
}

// Scale returns c times k.
func (c CPUSplit) Scale(k float64) CPUSplit {
	return CPUSplit{c.Containerd * k, c.Shim * k, c.Daemon * k, c.Host * k, c.Nerdctl * k, c.Other * k}
}

// Sub returns c - d.
func (c CPUSplit) Sub(d CPUSplit) CPUSplit {
	return c.Add(d.Scale(-1))
}

// proc is one process as /proc shows it.
type proc struct {
	ppid int
	// own is utime+stime, ticks that plus cutime+cstime.
	own, ticks int64
	args       []string
}

// parseProcStat reads the parent pid and the CPU ticks of the process and
// of its reaped children from the text of /proc/PID/stat.
func parseProcStat(text string) (ppid int, own, ticks int64, err error) {
	// The command name (field 2) may hold spaces and parentheses; the
	// fields after its last ')' start at state (field 3).
	i := strings.LastIndexByte(text, ')')
	if i < 0 {
		return 0, 0, 0, fmt.Errorf("parse stat: no command name")
	}
	f := strings.Fields(text[i+1:])
	if len(f) < 15 {
		return 0, 0, 0, fmt.Errorf("parse stat: %d fields after the command name", len(f))
	}
	if ppid, err = strconv.Atoi(f[1]); err != nil { // field 4
		return 0, 0, 0, fmt.Errorf("parse stat: ppid: %w", err)
	}
	for i, s := range f[11:15] { // fields 14-17: utime stime cutime cstime
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			return 0, 0, 0, fmt.Errorf("parse stat: cpu time %q", s)
		}
		if i < 2 {
			own += v
		}
		ticks += v
	}
	return ppid, own, ticks, nil
}

// readProcs reads every process under procDir (/proc); those that exit
// meanwhile are left out.
func readProcs(procDir string) map[int]proc {
	procs := map[int]proc{}
	entries, _ := os.ReadDir(procDir)
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(procDir, ent.Name(), "stat"))
		if err != nil {
			continue
		}
		ppid, own, ticks, err := parseProcStat(string(stat))
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(procDir, ent.Name(), "cmdline"))
		var args []string
		if len(cmdline) > 0 {
			args = strings.Split(string(bytes.TrimSuffix(cmdline, []byte{0})), "\x00")
		}
		procs[pid] = proc{ppid: ppid, own: own, ticks: ticks, args: args}
	}
	return procs
}

// Kinds of a node's processes, as procKind names them.
const (
	kindContainerd = "containerd"
	kindShim       = "shim"
	kindDaemon     = "daemon"
	kindHost       = "fuse-host"
	kindNerdctl    = "nerdctl"
	kindOther      = "other"
)

// procKind says what a process started with args is.
func procKind(args []string) string {
	if len(args) == 0 {
		return kindOther
	}
	base := filepath.Base(args[0])
	switch {
	case strings.HasPrefix(base, "soci-snapshotter-grpc") && slices.Contains(args[1:], "fuse-host"):
		return kindHost
	case strings.HasPrefix(base, "soci-snapshotter-grpc"):
		return kindDaemon
	case strings.HasPrefix(base, "containerd-shim"):
		return kindShim
	case base == "containerd":
		return kindContainerd
	case base == "nerdctl":
		return kindNerdctl
	}
	return kindOther
}

// add adds secs to the field of kind.
func (c *CPUSplit) add(kind string, secs float64) {
	switch kind {
	case kindContainerd:
		c.Containerd += secs
	case kindShim:
		c.Shim += secs
	case kindDaemon:
		c.Daemon += secs
	case kindHost:
		c.Host += secs
	case kindNerdctl:
		c.Nerdctl += secs
	default:
		c.Other += secs
	}
}

// nodeCPU sums the CPU time of one node's processes: those whose command
// line names a path under nodeDir (containerd, daemon, FUSE hosts, shims,
// nerdctl) and their descendants, each counted as its nearest such
// ancestor (itself included).
func nodeCPU(procs map[int]proc, nodeDir string) CPUSplit {
	prefix := strings.TrimSuffix(nodeDir, "/") + "/"
	isRoot := func(p proc) bool {
		for _, a := range p.args {
			if strings.Contains(a, prefix) {
				return true
			}
		}
		return false
	}
	var out CPUSplit
	for _, p := range procs {
		// Walk up to the nearest process of the node (a bounded walk: a
		// pid reused while reading /proc could make a cycle).
		q := p
		for depth := 0; depth < 64; depth++ {
			if isRoot(q) {
				out.add(procKind(q.args), float64(p.ticks)/clockTicks)
				break
			}
			parent, ok := procs[q.ppid]
			if !ok || q.ppid <= 1 {
				break
			}
			q = parent
		}
	}
	return out
}

// ownCPU sums the CPU time (seconds) the given processes spent themselves,
// without their children's.
func ownCPU(procs map[int]proc, pids ...int) float64 {
	var ticks int64
	for _, pid := range pids {
		ticks += procs[pid].own
	}
	return float64(ticks) / clockTicks
}

// machineBusy reads the CPU time (seconds, all cores) the machine spent
// not idle since boot from the text of /proc/stat.
func machineBusy(text string) (float64, error) {
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != "cpu" {
			continue
		}
		var busy int64
		for i, s := range f[1:] {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse /proc/stat: %q", s)
			}
			// user nice system idle iowait irq softirq steal guest guest_nice:
			// idle and iowait are not busy; guest time is already in user.
			if i == 3 || i == 4 || i >= 8 {
				continue
			}
			busy += v
		}
		return float64(busy) / clockTicks, nil
	}
	return 0, fmt.Errorf("parse /proc/stat: no cpu line")
}

// readMachineBusy is machineBusy of this machine, NaN when unreadable.
func readMachineBusy() float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return math.NaN()
	}
	b, err := machineBusy(string(data))
	if err != nil {
		return math.NaN()
	}
	return b
}
