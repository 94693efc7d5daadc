package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestClientVersionIsTheBuilds: the version the client sends in Hello (and
// the gateway logs as client="cachetun ...") is the one -X main.version set
// at build time: connect, exec, ls and doctor pass it in client.Options.
func TestClientVersionIsTheBuilds(t *testing.T) {
	old := version
	t.Cleanup(func() { version = old })
	version = "1.2.3-test"
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("profiles: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &ConnectCmd{Server: []string{"127.0.0.1:4433"}, Config: cfg}
	opts, err := c.profileOptions("cache")
	if err != nil {
		t.Fatal(err)
	}
	if opts.Version != "1.2.3-test" {
		t.Fatalf("client.Options.Version = %q, want the build's version %q", opts.Version, "1.2.3-test")
	}
}
