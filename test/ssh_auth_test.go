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
	g.Log.waitLog(t, "authentication refused: too many failed authentications")
	if n := strings.Count(g.Log.String(), "code=unknown_key"); n != 3 {
		t.Errorf("logged %d unknown_key failures, want 3", n)
	}
}
