package main

import (
	"io"
	"testing"

	"github.com/cachetun/cachetun/client"
)

// TestClientVersionIsTheBuilds: the version the client sends in Hello (and
// the gateway logs as client="cachetun ...") is the one -X main.version set
// at build time, not the client package's "dev".
func TestClientVersionIsTheBuilds(t *testing.T) {
	oldMain, oldClient := version, client.Version
	t.Cleanup(func() { version, client.Version = oldMain, oldClient })
	version = "1.2.3-test"
	if code := run([]string{"version"}, nil, io.Discard, io.Discard, signals{}); code != 0 {
		t.Fatalf("cachetun version exited %d", code)
	}
	if client.Version != "1.2.3-test" {
		t.Fatalf("client.Version = %q, want the build's version %q", client.Version, "1.2.3-test")
	}
}
