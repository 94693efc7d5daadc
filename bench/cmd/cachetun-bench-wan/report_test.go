package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWriteSection: the WAN section is appended to a file without one,
// replaced in place on the next run, and the loopback bench's section and
// the text around both are kept byte for byte.
func TestWriteSection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	other := "# Benchmarks\n\n<!-- cachetun-bench:begin -->\nloopback table\n<!-- cachetun-bench:end -->\n\ntail text\n"
	if err := os.WriteFile(path, []byte(other), 0o644); err != nil {
		t.Fatal(err)
	}
	first := sectionBegin + "\nrun one\n" + sectionEnd + "\n"
	if err := writeSection(path, first); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if want := other + "\n" + first; string(got) != want {
		t.Fatalf("after the first run:\n%q\nwant\n%q", got, want)
	}
	second := sectionBegin + "\nrun two\n" + sectionEnd + "\n"
	if err := writeSection(path, second); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(path)
	if want := other + "\n" + second; string(got) != want {
		t.Fatalf("after the second run:\n%q\nwant\n%q", got, want)
	}
	if strings.Contains(string(got), "run one") {
		t.Fatal("the first run's section was kept")
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1}, 3}, {[]float64{9, 1, 4}, 4}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}
