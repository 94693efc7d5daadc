package main

import (
	"strings"
	"testing"
)

// The gateway's stream gauge is labelled (transport, target) and has no
// series before the first stream; the idle test's leak check sums it.
func TestStreamsGauge(t *testing.T) {
	for _, c := range []struct {
		name, body string
		want       int
	}{
		{"labelled", "# TYPE cachetun_streams gauge\ncachetun_streams{target=\"bench\",transport=\"quic\"} 3\ncachetun_streams{target=\"b\",transport=\"tls\"} 2\ncachetun_streams_total{result=\"ok\"} 9\n", 5},
		{"zero", "# TYPE cachetun_streams gauge\ncachetun_streams{target=\"bench\",transport=\"quic\"} 0\n", 0},
		{"no series yet", "# HELP cachetun_streams Proxied streams open now.\n# TYPE cachetun_streams gauge\n", 0},
		{"unlabelled", "cachetun_streams 7\n", 7},
		{"no gauge", "go_goroutines 12\n", -1},
	} {
		if got := streamsGauge([]byte(c.body)); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

// -base-limits takes YAML lines for the base gateways' limits: and
// nothing that could add another key or section to their config.
func TestParseBaseLimits(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"resume_grace: 0s", []string{"resume_grace: 0s"}},
		{" resume_grace: 0s , max_streams_per_session: 100,", []string{"resume_grace: 0s", "max_streams_per_session: 100"}},
	} {
		got, err := parseBaseLimits(c.in)
		if err != nil || strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("parseBaseLimits(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"resume_grace 0s", "resume_grace:", "a: b: c", "a: 1\nmetrics: x", "Resume: 1", "a: 1 # c"} {
		if got, err := parseBaseLimits(bad); err == nil {
			t.Errorf("parseBaseLimits(%q) = %q, want an error", bad, got)
		}
	}
}
