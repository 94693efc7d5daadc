package test

import (
	"strings"
	"testing"
	"time"

	"github.com/cachetun/cachetun/test/testenv"
)

// TestTransport_AutoFallsBackToTLS: with no QUIC answer on the gateway's
// UDP port, `--transport auto` reaches the target over TLS within 3 s and
// says so.
func TestTransport_AutoFallsBackToTLS(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "traveller")
	g := startGateway(t, redisTarget(r), []string{k.Line}, withoutQUIC)
	start := time.Now()
	c := mustConnect(t, g, "auto", "cache", k)
	elapsed := time.Since(start)
	if !strings.Contains(c.Out.String(), "via tls") {
		t.Fatalf("listener table does not say tls: %q", c.Out.String())
	}
	if !strings.Contains(c.Log.String(), "falling back to tls") {
		t.Errorf("client did not log the fallback")
	}
	// The bar: connected over TLS within 3 s (QUIC waits 1.5 s).
	if elapsed > 3*time.Second {
		t.Fatalf("fallback took %s, want under 3s", elapsed)
	}
	if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
		t.Fatalf("PING over the fallback: %q", got)
	}
}

// TestTransport_AutoPrefersQUIC: with both listening, auto uses QUIC.
func TestTransport_AutoPrefersQUIC(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "office")
	g := startGateway(t, redisTarget(r), []string{k.Line})
	c := mustConnect(t, g, "auto", "cache", k)
	if !strings.Contains(c.Out.String(), "via quic") {
		t.Fatalf("listener table: %q", c.Out.String())
	}
}
