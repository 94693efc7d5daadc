package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// threeTargets: a redis, a memcached and a redis the key may not use.
func threeTargets(t *testing.T) (map[string]*server.Target, *testenv.Redis, *testenv.Memcached) {
	r := testenv.StartRedis(t)
	m := testenv.StartMemcached(t)
	secret := testenv.StartRedis(t)
	return map[string]*server.Target{
		"cache":    {Type: server.TypeRedis, Nodes: []string{r.Addr}},
		"sessions": {Type: server.TypeMemcached, Nodes: []string{m.Addr}},
		"secret":   {Type: server.TypeRedis, Nodes: []string{secret.Addr}},
	}, r, m
}

// sessionStarts counts the gateway's "session start" audit lines.
func sessionStarts(g *gateway) int { return strings.Count(g.Log.String(), "session start") }

// TestConnect_SeveralTargets: one connect for two targets opens one
// session (one "session start" on the gateway) and one table with both
// targets' ports, and both ports reach their own cache, on every transport.
func TestConnect_SeveralTargets(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		targets, r, m := threeTargets(t)
		k := newKey(t, "alice")
		g := startGateway(t, targets, []string{`targets="cache,sessions" ` + k.Line})
		c := mustConnect(t, g, transport, "cache", k, func(o *client.Options) {
			o.Targets = []client.TargetOptions{{Name: "cache"}, {Name: "sessions", Profile: "sess"}}
		})
		if got := redisCLI(t, c.Local(t, r.Addr), "SET", "k", "v"); got != "OK" {
			t.Fatalf("SET through cache's port: %q", got)
		}
		mcSet(t, c.Local(t, m.Addr), "mk", "mv")
		if got, ok := m.Get(t, "mk"); !ok || got != "mv" {
			t.Fatalf("memcached read directly: %q %v", got, ok)
		}
		if n := sessionStarts(g); n != 1 {
			t.Fatalf("%d sessions on the gateway for one connect of two targets, want 1", n)
		}
		out := c.Out.String()
		for _, want := range []string{"cache  redis  via " + transport, "sess  memcached  via " + transport, "->  " + r.Addr, "->  " + m.Addr} {
			if !strings.Contains(out, want) {
				t.Errorf("table lacks %q:\n%s", want, out)
			}
		}
		if eps := c.Client.Endpoints(); len(eps) != 2 || eps[0].Name != "cache" || eps[1].Name != "sessions" {
			t.Fatalf("endpoints: %+v", eps)
		}
	})
}

// TestConnect_AllTargets: --all connects exactly the targets the key may
// use (2 of the gateway's 3), on one session; a target the key may not use
// named among several is refused with the allowed list.
func TestConnect_AllTargets(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		targets, r, m := threeTargets(t)
		k := newKey(t, "alice")
		g := startGateway(t, targets, []string{`targets="cache,sessions" ` + k.Line})
		c := mustConnect(t, g, transport, "", k, func(o *client.Options) {
			o.Target, o.Profile, o.All = "", "", true
		})
		eps := c.Client.Endpoints()
		var names []string
		for _, e := range eps {
			names = append(names, e.Name)
		}
		if strings.Join(names, ",") != "cache,sessions" {
			t.Fatalf("--all connected %v, want [cache sessions]", names)
		}
		if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
			t.Fatalf("PING: %q", got)
		}
		mcSet(t, c.Local(t, m.Addr), "a", "b")
		if n := sessionStarts(g); n != 1 {
			t.Fatalf("%d sessions for --all, want 1", n)
		}

		_, err := startConnect(t, g, transport, "cache", k, func(o *client.Options) {
			o.Targets = []client.TargetOptions{{Name: "cache"}, {Name: "secret"}}
		})
		if err == nil || !strings.Contains(errText(err), `may not use target "secret"`) || !strings.Contains(errText(err), "[cache sessions]") {
			t.Fatalf("connect cache+secret: got %v, want a refusal of secret naming [cache sessions]", errText(err))
		}
	})
}

// TestList_Targets: a List Hello returns the targets the key may use with
// their type and node count, and nothing else.
func TestList_Targets(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		targets, _, _ := threeTargets(t)
		k := newKey(t, "alice")
		g := startGateway(t, targets, []string{`targets="cache,sessions" ` + k.Line})
		cl, err := client.New(client.Options{Servers: []string{g.ServerAddr(transport)}, List: true, Transport: transport,
			Identity: k.Path, KnownHosts: g.KnownHosts(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		list, err := cl.List(ctx)
		if err != nil {
			t.Fatal(errText(err))
		}
		if len(list) != 2 || list[0].Name != "cache" || list[0].Type != "redis" || list[0].Nodes != 1 ||
			list[1].Name != "sessions" || list[1].Type != "memcached" || list[1].Nodes != 1 {
			t.Fatalf("list: %+v, want cache redis 1, sessions memcached 1", list)
		}
	})
}
