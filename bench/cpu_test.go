package bench

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestParseProcStat(t *testing.T) {
	// A command name with spaces and a ')' must not shift the fields.
	text := "4242 (a b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 100 0 0\n"
	ppid, own, ticks, err := parseProcStat(text)
	if err != nil || ppid != 17 || own != 300 || ticks != 310 {
		t.Fatalf("parseProcStat = %d, %d, %d, %v; want 17, 300, 310, nil", ppid, own, ticks, err)
	}
	for _, bad := range []string{"", "1 (x S 1", "1 (x) S 1 2 3", "1 (x) S z 1 1 0 -1 0 0 0 0 0 1 1 1 1",
		"1 (x) S 1 1 1 0 -1 0 0 0 0 0 1 -1 1 1", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 1 x 1 1"} {
		if _, _, _, err := parseProcStat(bad); err == nil {
			t.Errorf("parseProcStat(%q) took it", bad)
		}
	}
}

func TestNodeCPU(t *testing.T) {
	const dir = "/w/runs/n8/node1"
	procs := map[int]proc{
		1:   {ppid: 0, ticks: 1e6, args: []string{"/sbin/init"}},
		10:  {ppid: 1, ticks: 1e5, args: []string{"/bench"}},
		100: {ppid: 10, ticks: 100, args: []string{"/t/containerd", "--config", dir + "/containerd/config.toml"}},
		101: {ppid: 100, ticks: 5, args: []string{"/bin/mount", "x"}}, // a child counts as its parent's kind
		200: {ppid: 10, ticks: 20, args: []string{"/o/soci-snapshotter-grpc", "--root", dir + "/daemon/root"}},
		201: {ppid: 200, ticks: 40, args: []string{"/o/soci-snapshotter-grpc", "--root", dir + "/daemon/root", "fuse-host", "--id", "x"}},
		300: {ppid: 1, ticks: 30, args: []string{"/t/containerd-shim-runc-v2", "-address", dir + "/containerd/containerd.sock"}},
		301: {ppid: 300, ticks: 2, args: []string{"/probe"}},
		302: {ppid: 301, ticks: 1, args: nil}, // a zombie: no command line
		400: {ppid: 10, ticks: 50, args: []string{"/t/nerdctl", "--address", dir + "/containerd/containerd.sock", "run"}},
		500: {ppid: 10, ticks: 7, args: []string{"/bin/true", dir + "/x"}},
		// node10 is another node: "node1" is a prefix of its directory.
		600: {ppid: 10, ticks: 900, args: []string{"/t/containerd", "--config", dir + "0/containerd/config.toml"}},
		// a cycle through a reused pid must end
		700: {ppid: 701, ticks: 1, args: []string{"a"}},
		701: {ppid: 700, ticks: 1, args: []string{"b"}},
	}
	got := nodeCPU(procs, dir)
	want := CPUSplit{Containerd: 1.05, Shim: 0.33, Daemon: 0.2, Host: 0.4, Nerdctl: 0.5, Other: 0.07}
	if math.Abs(got.Sub(want).Total()) > 1e-9 || math.Abs(got.Containerd-want.Containerd) > 1e-9 || math.Abs(got.Shim-want.Shim) > 1e-9 ||
		math.Abs(got.Host-want.Host) > 1e-9 || math.Abs(got.Daemon-want.Daemon) > 1e-9 || math.Abs(got.Nerdctl-want.Nerdctl) > 1e-9 {
		t.Errorf("nodeCPU = %+v, want %+v", got, want)
	}
	if math.Abs(got.Ours()-0.6) > 1e-9 {
		t.Errorf("Ours = %v, want 0.6", got.Ours())
	}
	if c := ownCPU(map[int]proc{3: {own: 150, ticks: 900}, 4: {own: 50}}, 3, 4, 5); c != 2 {
		t.Errorf("ownCPU = %v, want 2", c)
	}
}

func TestReadProcs(t *testing.T) {
	dir := t.TempDir()
	write := func(pid, name, text string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(dir, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, pid, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("7", "stat", "7 (containerd) S 1 7 7 0 -1 0 0 0 0 0 12 3 4 5 20 0 1 0 1 0 0\n")
	write("7", "cmdline", "/t/containerd\x00--config\x00/n/c.toml\x00")
	write("8", "stat", "garbage")
	write("self", "stat", "9 (x) S 1 1 1 0 -1 0 0 0 0 0 1 1 1 1 20 0 1 0 1 0 0\n")
	procs := readProcs(dir)
	if len(procs) != 1 {
		t.Fatalf("readProcs = %+v, want pid 7 only", procs)
	}
	p := procs[7]
	if p.ppid != 1 || p.own != 15 || p.ticks != 24 || len(p.args) != 3 || p.args[2] != "/n/c.toml" {
		t.Errorf("pid 7 = %+v", p)
	}
}

func TestMachineBusy(t *testing.T) {
	text := "cpu  100 20 30 1000 50 5 5 10 40 0\ncpu0 1 1 1 1 1 1 1 1 0 0\nintr 1\n"
	// user nice system irq softirq steal; not idle, iowait or guest (in user).
	if b, err := machineBusy(text); err != nil || b != 1.7 {
		t.Errorf("machineBusy = %v, %v; want 1.7", b, err)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5\n", "cpu 1 x 3 4 5\n"} {
		if _, err := machineBusy(bad); err == nil {
			t.Errorf("machineBusy(%q) took it", bad)
		}
	}
}
