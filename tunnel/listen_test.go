package tunnel

import "testing"

// TestExactNetwork: an IPv4 listen address is bound as tcp4/udp4 (so
// 0.0.0.0:4433 is not also [::]:4433); every other spelling keeps the
// dual-stack network.
func TestExactNetwork(t *testing.T) {
	for _, c := range []struct{ network, addr, want string }{
		{"tcp", "0.0.0.0:4433", "tcp4"},
		{"udp", "0.0.0.0:4433", "udp4"},
		{"tcp", "127.0.0.1:0", "tcp4"},
		{"tcp", "10.0.1.5:2222", "tcp4"},
		{"tcp", ":4433", "tcp"},
		{"udp", ":4433", "udp"},
		{"tcp", "[::]:4433", "tcp"},
		{"udp", "[::1]:4433", "udp"},
		{"tcp", "gw.internal:4433", "tcp"},
		{"tcp", "bad", "tcp"},
	} {
		if got := exactNetwork(c.network, c.addr); got != c.want {
			t.Errorf("exactNetwork(%q, %q) = %q, want %q", c.network, c.addr, got, c.want)
		}
	}
}
