//go:build !race

package index

// raceEnabled: the race detector allocates besides the code measured.
const raceEnabled = false
