package main

import "testing"

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
