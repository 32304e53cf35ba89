package bench

import (
	"math"
	"slices"
)

// Summary is the median, minimum and maximum of some samples.
type Summary struct {
	Median, Min, Max float64
	N                int
}

// Summarize summarizes xs; NaN values (missing samples) are ignored. With no
// samples N is 0 and the values are NaN.
func Summarize(xs []float64) Summary {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(v)
	n := len(v)
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return Summary{Median: med, Min: v[0], Max: v[n-1], N: n}
}

// PairedRatios divides a[i] by b[i] for every i both have (a NaN or a zero
// divisor gives no ratio): runs paired by iteration, A B A B.
func PairedRatios(a, b []float64) []float64 {
	var out []float64
	for i := 0; i < len(a) && i < len(b); i++ {
		if math.IsNaN(a[i]) || math.IsNaN(b[i]) || b[i] == 0 {
			continue
		}
		out = append(out, a[i]/b[i])
	}
	return out
}
