package server

import "testing"

// TestListenNetwork: an IPv4 metrics address is bound as tcp4, so
// "0.0.0.0:9464" does not also listen on [::] (Go's "tcp" binds 0.0.0.0
// dual-stack); every other spelling keeps "tcp".
func TestListenNetwork(t *testing.T) {
	for addr, want := range map[string]string{
		"0.0.0.0:9464":   "tcp4",
		"127.0.0.1:9464": "tcp4",
		"10.0.1.5:9464":  "tcp4",
		"[::]:9464":      "tcp",
		"[::1]:9464":     "tcp",
		":9464":          "tcp",
		"localhost:9464": "tcp",
		"bad":            "tcp",
	} {
		if got := listenNetwork(addr); got != want {
			t.Errorf("listenNetwork(%q) = %q, want %q", addr, got, want)
		}
	}
}
