package bench

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want Summary
	}{
		{[]float64{3, 1, 2}, Summary{Median: 2, Min: 1, Max: 3, N: 3}},
		{[]float64{4, 1, 3, 2}, Summary{Median: 2.5, Min: 1, Max: 4, N: 4}},
		{[]float64{math.NaN(), 5}, Summary{Median: 5, Min: 5, Max: 5, N: 1}},
	} {
		if got := Summarize(tc.in); got != tc.want {
			t.Errorf("Summarize(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	if s := Summarize(nil); s.N != 0 || !math.IsNaN(s.Median) {
		t.Errorf("Summarize(nil) = %+v", s)
	}
}

func TestPairedRatios(t *testing.T) {
	got := PairedRatios([]float64{1, 2, math.NaN(), 4}, []float64{2, 0, 1, 8, 9})
	want := []float64{0.5, 0.5}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("PairedRatios = %v, want %v (zero divisor, NaN and unpaired runs skipped)", got, want)
	}
}

func testReport() *Report {
	r := &Report{Link: "shared link: 20ms RTT, 200 Mbit/s each way shared by all connections", Runs: 3, Snapshotters: []string{Overlayfs, Ours, "ref"},
		Workloads: []WorkloadInfo{{Name: "w"}}}
	add := func(sn string, ttrs ...float64) {
		for i, v := range ttrs {
			run := Run{Workload: "w", Snapshotter: sn, Iteration: i, TTRSeconds: v,
				PullSeconds: v / 2, RunSeconds: v / 2, BytesBeforeReady: 1e6, BytesTotal: 2e6,
				ContainerdPeakRSS: 40 << 20, ContainerdCPUSeconds: 1, ClientCPUSeconds: 0.5}
			switch sn {
			case Ours: // a daemon and its FUSE host
				run.DaemonPeakRSS, run.DaemonCPUSeconds = 30<<20, 0.25
				run.Hosts, run.HostPeakRSS, run.HostCPUSeconds = 1, 70<<20, 2
				run.BytesBeforeReady = 5e5
			case "ref": // a daemon without hosts
				run.DaemonPeakRSS, run.DaemonCPUSeconds = 60<<20, 1
			}
			r.Results = append(r.Results, run)
		}
	}
	add(Overlayfs, 10, 20, 30)
	add(Ours, 1, 4, 3)
	for i, v := range []float64{7, 5, 6} {
		r.Results[3+i].FullyLocalSeconds = &v
	}
	for i, v := range []float64{2, 2, 4, 2.1, 2.4, 4} { // warm runs: overlayfs, then ours
		r.Results[i].WarmRunSeconds = &v
	}
	add("ref", 2, 2, 2)
	r.Results = append(r.Results, Run{Workload: "w", Snapshotter: "ref", Iteration: 2, Error: "boom"})
	return r
}

func TestTable(t *testing.T) {
	var b bytes.Buffer
	if err := testReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"w         overlayfs    3/3  20.00 (10.00-30.00)",
		"w         soci         3/3  3.00 (1.00-4.00)",
		"link: shared link: 20ms RTT, 200 Mbit/s each way shared by all connections\n",
		// node = containerd + daemon + host; the snapshotter columns
		// are empty for overlayfs, the host's for a daemon without one.
		"w         overlayfs    40 (40-40)     -                   -           -           40 (40-40)     1.50 (1.50-1.50)  -  ",
		"w         soci         140 (140-140)  100 (100-100)       30 (30-30)  70 (70-70)  40 (40-40)     3.75 (3.75-3.75)  2.25 (2.25-2.25)   0.25 (0.25-0.25)  2.00 (2.00-2.00)  1.00 (1.00-1.00)  0.50 (0.50-0.50)",
		"w         ref          100 (100-100)  60 (60-60)          60 (60-60)  -           40 (40-40)     2.50 (2.50-2.50)  1.00 (1.00-1.00)   1.00 (1.00-1.00)  -  ",
		"soci/overlayfs  0.100 (0.100-0.200)  0.500 (0.500-0.500)  3.500 (3.500-3.500)  2.500 (2.500-2.500)  1.050 (1.000-1.200)  3",
		"soci/ref        1.500 (0.500-2.000)  0.500 (0.500-0.500)  1.400 (1.400-1.400)  1.500 (1.500-1.500)  -                    3",
		"6.00 (5.00-7.00) s  2.400 (2.100-4.000)",
		"n/a",
		"6.00 (5.00-7.00) s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestJSONAndChart(t *testing.T) {
	dir := t.TempDir()
	r := testReport()
	if err := r.WriteJSON(filepath.Join(dir, "results.json")); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteChart(filepath.Join(dir, "ttr.png")); err != nil {
		t.Fatal(err)
	}
	png, err := os.ReadFile(filepath.Join(dir, "ttr.png"))
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("ttr.png is not a PNG (%v)", err)
	}
}

func TestWorkloadsBuildDeterministically(t *testing.T) {
	for _, w := range Workloads() {
		if w.Name == "sparse-1g" {
			continue // 1 GB: built by the benchmark itself
		}
		a, b := w.Spec([]byte("probe")), w.Spec([]byte("probe"))
		if len(a.Layers) != len(b.Layers) || len(a.Cmd) == 0 || a.Cmd[len(a.Cmd)-1] != "ready" {
			t.Errorf("%s: bad spec", w.Name)
		}
	}
}

func TestLogTicks125(t *testing.T) {
	var got []float64
	for _, tk := range (logTicks125{}).Ticks(1.2, 60) {
		got = append(got, tk.Value)
	}
	want := []float64{2, 5, 10, 20, 50}
	if len(got) != len(want) {
		t.Fatalf("ticks %v, want %v", got, want)
	}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-9 {
			t.Fatalf("ticks %v, want %v", got, want)
		}
	}
}
