package bench

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// errPoints are medians with their min-max spread, for YErrorBars.
type errPoints struct {
	plotter.XYs
	plotter.YErrors
}

// palette is the colour of the k-th snapshotter.
func palette() []color.Color {
	return []color.Color{
		color.RGBA{R: 0x55, G: 0x55, B: 0x55, A: 0xff},
		color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
		color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
		color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
		color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	}
}

// WriteChart draws TTR per workload per snapshotter, the median as a point
// and min-max as a bar, on a log scale, to a PNG at path.
func (r *Report) WriteChart(path string) error {
	p := plot.New()
	p.Title.Text = "time to ready, " + r.Shaping.short()
	p.Y.Label.Text = "seconds (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = logTicks125{}
	names := make([]string, len(r.Workloads))
	for i, wl := range r.Workloads {
		names[i] = wl.Name
	}
	p.NominalX(names...)
	n := len(r.Snapshotters)
	lo, hi := math.Inf(1), math.Inf(-1)
	for k, sn := range r.Snapshotters {
		var pts errPoints
		for i, wl := range r.Workloads {
			s := Summarize(r.series(wl.Name, sn, ttr))
			if s.N == 0 || s.Min <= 0 {
				continue
			}
			x := float64(i) + (float64(k)-float64(n-1)/2)*0.6/float64(max(n, 1))
			pts.XYs = append(pts.XYs, plotter.XY{X: x, Y: s.Median})
			pts.YErrors = append(pts.YErrors, struct{ Low, High float64 }{s.Median - s.Min, s.Max - s.Median})
			lo, hi = math.Min(lo, s.Min), math.Max(hi, s.Max)
		}
		if len(pts.XYs) == 0 {
			continue
		}
		c := palette()[k%len(palette())]
		sc, err := plotter.NewScatter(pts.XYs)
		if err != nil {
			return fmt.Errorf("chart %s: %w", sn, err)
		}
		sc.GlyphStyle = draw.GlyphStyle{Color: c, Radius: vg.Points(3), Shape: draw.CircleGlyph{}}
		eb, err := plotter.NewYErrorBars(pts)
		if err != nil {
			return fmt.Errorf("chart %s: %w", sn, err)
		}
		eb.LineStyle.Color = c
		eb.LineStyle.Width = vg.Points(2)
		eb.CapWidth = vg.Points(6)
		p.Add(sc, eb)
		p.Legend.Add(sn, sc)
	}
	if !math.IsInf(lo, 0) {
		p.Y.Min, p.Y.Max = lo/1.5, hi*1.5
	}
	p.X.Min, p.X.Max = -0.5, float64(len(r.Workloads))-0.5
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	width := vg.Length(max(5, 1.6*float64(len(r.Workloads)))) * vg.Inch
	if err := p.Save(width, 4*vg.Inch, path); err != nil {
		return fmt.Errorf("save chart %s: %w", path, err)
	}
	return nil
}

// logTicks125 labels 1, 2 and 5 times each power of ten on a log axis, so
// that a range within one decade still has labels.
type logTicks125 struct{}

func (logTicks125) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	if lo <= 0 || hi <= lo {
		return ticks
	}
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v >= lo && v <= hi {
				ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	return ticks
}

// short labels the link in a chart title: "20ms RTT, 200 Mbit/s shared link".
func (s ShapingInfo) short() string {
	switch s.Mode {
	case "", "unshaped":
		return "unshaped"
	case "per-conn":
		return fmt.Sprintf("%gms RTT, %g Mbit/s per connection", s.RTTMs, s.RateMbit)
	}
	return fmt.Sprintf("%gms RTT, %g Mbit/s shared link", s.RTTMs, s.RateMbit)
}
