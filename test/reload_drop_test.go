package test

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/test/testenv"
)

// eventLog collects a client's events (OnEvent must not block).
type eventLog struct {
	mu sync.Mutex
	ev []client.Event
}

func (l *eventLog) add(e client.Event) { l.mu.Lock(); l.ev = append(l.ev, e); l.mu.Unlock() }

// find returns the first event of kind for target.
func (l *eventLog) find(kind, target string) (client.Event, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.ev {
		if e.Kind == kind && e.Target == target {
			return e, true
		}
	}
	return client.Event{}, false
}

// TestReload_TargetDroppedFromSession runs the real gateway process, on
// every transport. One cachetun session carries targets "cache" and
// "sessions" (two redis-servers). A reload then takes "cache" away from
// the session, by removing it from server.yaml ("removed") or by narrowing
// the key's targets= to "sessions" ("narrowed"). Within 2 s of SIGHUP the
// client's local port for cache refuses connections, the client has
// emitted a target_removed event for cache with the gateway's reason and
// logged `target "cache" is no longer available: ...`, its table no longer
// lists cache; sessions still answers PING, on a connection opened before
// the reload and on a new one, through the same session (the gateway logs
// one "session start", and the client's Run has not returned).
func TestReload_TargetDroppedFromSession(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		for _, tc := range []struct {
			name   string
			reason string // in the client's event
		}{
			{"removed", "removed from the gateway's configuration"},
			{"narrowed", "may no longer use it"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				rc, rs := testenv.StartRedis(t), testenv.StartRedis(t)
				k := newKey(t, "ops@laptop")
				opts := gatewayProcOpts{
					Targets:    map[string]string{"cache": redisTargetYAML(rc), "sessions": redisTargetYAML(rs)},
					Authorized: []string{`targets="cache,sessions" ` + k.Line},
				}
				g := startGatewayProc(t, opts)
				events := &eventLog{}
				c := mustConnect(t, g, transport, "cache", k, func(o *client.Options) {
					o.Targets = []client.TargetOptions{{Name: "cache"}, {Name: "sessions"}}
					o.OnEvent = events.add
				})
				cacheLocal, sessLocal := c.Local(t, rc.Addr), c.Local(t, rs.Addr)
				openPing(t, cacheLocal)
				sessConn, sessBR := openPing(t, sessLocal)

				switch tc.name {
				case "removed":
					opts.Targets = map[string]string{"sessions": redisTargetYAML(rs)}
					g.WriteConfig(t, opts)
				case "narrowed":
					g.WriteAuthorizedKeys(t, []string{`targets="sessions" ` + k.Line})
				}
				hup := time.Now()
				if out := g.Reload(t); !strings.Contains(out, "reloaded") {
					t.Fatalf("reload log:\n%s", out)
				}
				waitFor(t, 2*time.Second-time.Since(hup), "the local port of cache to refuse connections", func() bool {
					nc, err := net.DialTimeout("tcp", cacheLocal, time.Second)
					if err != nil {
						return true
					}
					nc.Close()
					return false
				})
				t.Logf("%s: the local port of cache refused connections %s after SIGHUP (bound 2 s)", transport, time.Since(hup).Round(time.Millisecond))

				ev, ok := events.find(client.EventTargetRemoved, "cache")
				if !ok {
					t.Fatalf("no %s event for cache; client log:\n%s", client.EventTargetRemoved, c.Log.String())
				}
				if !strings.Contains(ev.Reason, tc.reason) {
					t.Errorf("target_removed reason %q, want it to contain %q", ev.Reason, tc.reason)
				}
				for _, te := range ev.Targets {
					if te.Name == "cache" {
						t.Errorf("the event's table still lists cache: %+v", ev.Targets)
					}
				}
				if !strings.Contains(c.Log.String(), `target \"cache\" is no longer available: `) &&
					!strings.Contains(c.Log.String(), `target "cache" is no longer available: `) {
					t.Errorf("client log has no line saying cache is no longer available:\n%s", c.Log.String())
				}
				if _, ok := c.Client.LocalAddrs()[rc.Addr]; ok {
					t.Errorf("client still has a local port for cache: %v", c.Client.LocalAddrs())
				}
				for _, te := range c.Client.Endpoints() {
					if te.Name == "cache" {
						t.Errorf("client's table still lists cache")
					}
				}

				// sessions goes on in the same session.
				if got, err := redisPingOn(sessConn, sessBR); err != nil || got != "+PONG" {
					t.Errorf("PING on the sessions connection opened before the reload: %q, %v; want +PONG", got, err)
				}
				openPing(t, sessLocal)
				select {
				case err := <-c.Err:
					c.Err <- err
					t.Fatalf("the client stopped: %v", errText(err))
				default:
				}
				if n := strings.Count(g.Log(), "session start"); n != 1 {
					t.Errorf("gateway logged %d session starts, want 1 (no reconnect)", n)
				}
				if !hasLine(g.Log(), "target taken from the session: client told", "target=cache") {
					t.Errorf("gateway log has no line telling the client about cache:\n%s", g.Log())
				}
			})
		}
	})
}
