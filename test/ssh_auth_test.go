package test

import (
	"strings"
	"testing"

	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// TestSSH_AuthRateLimit: failed SSH authentications count against the
// source address; over the budget even a good key is refused, with the
// reason, before the handshake gets anywhere.
func TestSSH_AuthRateLimit(t *testing.T) {
	r := testenv.StartRedis(t)
	good := newKey(t, "good")
	stranger := newKey(t, "stranger")
	g := startGateway(t, redisTarget(r), []string{good.Line}, func(c *server.Config) { c.Limits.AuthFailuresPerMinute = 3 })
	for i := 0; i < 3; i++ {
		_, err := startConnect(t, g, "ssh", "cache", stranger)
		if err == nil || !strings.Contains(errText(err), "not authorized") {
			t.Fatalf("attempt %d with an unknown key: %v", i, errText(err))
		}
	}
	_, err := startConnect(t, g, "ssh", "cache", good)
	if err == nil {
		t.Fatal("a good key got in from an address over its failure budget")
	}
	if msg := errText(err); !strings.Contains(msg, "too many failed authentications") {
		t.Fatalf("error %q does not name the rate limit", msg)
	}
	// The gateway counted what it did: three unknown keys, then the good
	// key refused for the address's budget.
	ms := gatewayMetrics(t, g)
	if n, _ := ms.value("cachetun_auth_failures_total", map[string]string{"reason": "unknown_key"}); n != 3 {
		t.Errorf("counted %v unknown_key failures, want 3 (%s)", n, ms.labelSets("cachetun_auth_failures_total"))
	}
	if n, _ := ms.value("cachetun_auth_failures_total", map[string]string{"reason": "rate_limited"}); n < 1 {
		t.Errorf("counted %v rate_limited refusals, want at least 1 (%s)", n, ms.labelSets("cachetun_auth_failures_total"))
	}
}
