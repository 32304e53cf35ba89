package bench

import (
	"os"
	"strings"
	"testing"
)

func TestMemSamplerPeaks(t *testing.T) {
	if _, err := os.Stat("/proc/self/smaps_rollup"); err != nil {
		t.Skip("no smaps_rollup")
	}
	calls := 0
	s := startMemSampler(func() []int {
		calls++
		return []int{os.Getpid(), -1} // a pid that cannot be read is skipped
	})
	peak := s.Stop()
	if calls < 2 || peak.pss <= 0 || peak.anon <= 0 {
		t.Fatalf("%d samples, peak %+v", calls, peak)
	}
	if os.Geteuid() == 0 && peak.distinct <= 0 {
		t.Fatalf("as root, no distinct resident pages: %+v", peak)
	}
}

func TestMemoryTable(t *testing.T) {
	r := &Report{Runs: 1, Snapshotters: []string{Overlayfs, Ours}, Workloads: []WorkloadInfo{{Name: "w"}},
		Results: []Run{{Workload: "w", Snapshotter: Overlayfs}, {Workload: "w", Snapshotter: Ours, DaemonPeakRSS: 30 << 20, HostPeakRSS: 70 << 20,
			SnapshotterPeakPSS: 80 << 20, SnapshotterPeakDistinct: 77 << 20, SnapshotterPeakAnon: 50 << 20, DaemonRSSAnon: 6 << 20, DaemonRSSFile: 23 << 20,
			HostRSSAnon: 20 << 20, HostRSSFile: 24 << 20}}}
	var b strings.Builder
	if err := r.writeMemoryTable(&b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	last := strings.Fields(lines[len(lines)-1])
	if want := []string{"w", Ours, "100", "77", "80", "50", "6", "23", "20", "24"}; strings.Join(last, " ") != strings.Join(want, " ") {
		t.Fatalf("row %q, want %q\n%s", last, want, b.String())
	}
	if strings.Contains(b.String(), Overlayfs) {
		t.Errorf("overlayfs has no daemon:\n%s", b.String())
	}
}
