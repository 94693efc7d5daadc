package main

import (
	"testing"
	"time"
)

// TestEstimate: the estimate grows with rounds and with the bound, the
// bound is never below it, and the default run (6 links, 5 paths, every
// workload, 2 rounds) is expected under 15 minutes.
func TestEstimate(t *testing.T) {
	typ, most := estimate(allLinks, allPaths, allWorkloads, 2, defaultGet50, defaultBulkCap)
	if typ > most {
		t.Fatalf("expected %v above its bound %v", typ, most)
	}
	if typ >= 15*time.Minute {
		t.Fatalf("default run expected to take %v, want under 15 minutes", typ)
	}
	one, _ := estimate(allLinks, allPaths, allWorkloads, 1, defaultGet50, defaultBulkCap)
	if !(one < typ) {
		t.Fatalf("1 round %v, 2 rounds %v: want more for more rounds", one, typ)
	}
	longer, _ := estimate(allLinks, allPaths, allWorkloads, 2, defaultGet50, 4*defaultBulkCap)
	if !(longer > typ) {
		t.Fatalf("bound ×4: %v, default %v: want longer", longer, typ)
	}
	t.Logf("default run: about %v, at most %v", typ.Round(time.Second), most.Round(time.Second))
}
