//go:build !race

package test

// raceEnabled reports whether the race detector is on: it slows Go code
// many times over, so performance ratios are reported, not checked.
const raceEnabled = false
