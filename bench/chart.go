package bench

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"

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
	p.Title.Text = "time to ready (" + r.Link + ")"
	p.Y.Label.Text = "seconds (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
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
	width := vg.Length(max(4, 1.6*float64(len(r.Workloads)))) * vg.Inch
	if err := p.Save(width, 4*vg.Inch, path); err != nil {
		return fmt.Errorf("save chart %s: %w", path, err)
	}
	return nil
}
