package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
	"github.com/cachetun/cachetun/tunnel"
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

// sessionStarts is the number of authenticated sessions g has started
// (cachetun_sessions_total, over every transport and target). A session
// is counted before its Welcome is sent, so a client that is connected
// has been counted.
func sessionStarts(t testing.TB, g *gateway) int {
	t.Helper()
	return int(gatewayMetric(t, g, "cachetun_sessions_total", nil))
}

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
		if n := sessionStarts(t, g); n != 1 {
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
		if n := sessionStarts(t, g); n != 1 {
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

// TestRevocation_SeveralTargets: a session of two targets (a real gateway
// process) survives a reload that takes one of them away, whose stream is
// cut within revokeBound; a reload that takes the other away too ends the
// session within revokeBound.
func TestRevocation_SeveralTargets(t *testing.T) {
	ra, rb, rc := testenv.StartRedis(t), testenv.StartRedis(t), testenv.StartRedis(t)
	forEachTransport(t, func(t *testing.T, transport string) {
		k := newKey(t, "two")
		g := startGatewayProc(t, gatewayProcOpts{
			Targets: map[string]string{
				"a": fmt.Sprintf("{type: redis, nodes: [%q]}", ra.Addr),
				"b": fmt.Sprintf("{type: redis, nodes: [%q]}", rb.Addr),
				"c": fmt.Sprintf("{type: redis, nodes: [%q]}", rc.Addr),
			},
			Authorized: []string{`targets="a,b" ` + k.Line},
		})
		cl, err := client.New(client.Options{
			Servers: []string{g.ServerAddr(transport)}, Targets: []client.TargetOptions{{Name: "a"}, {Name: "b"}},
			Transport: transport, Identity: k.Path, KnownHosts: g.KnownHosts(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		sess, w, err := cl.Dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		if len(w.Targets) != 2 || w.Targets[0].Name != "a" || w.Targets[1].Name != "b" {
			t.Fatalf("welcome targets %+v, want a and b", w.Targets)
		}
		open := func(target, node string) tunnel.Stream {
			t.Helper()
			st, err := sess.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: target, Node: node})
			if err != nil {
				t.Fatal(err)
			}
			if err := redisPing(st); err != nil {
				t.Fatalf("PING on %s: %v", target, err)
			}
			return st
		}
		sa, sb := open("a", ra.Addr), open("b", rb.Addr)
		defer sa.Close()
		defer sb.Close()

		g.WriteAuthorizedKeys(t, []string{`targets="a" ` + k.Line})
		start := time.Now()
		g.Reload(t)
		_ = sb.SetReadDeadline(start.Add(revokeBound + 500*time.Millisecond))
		_, err = io.Copy(io.Discard, sb)
		took := time.Since(start)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || took > revokeBound {
			t.Fatalf("stream to b still open %s after the reload (bound %s): %v", took, revokeBound, err)
		}
		if err := redisPing(sa); err != nil {
			t.Fatalf("stream to a broke: %v", err)
		}
		select {
		case <-sess.Done():
			t.Fatal("the session ended, but target a is still allowed")
		default:
		}

		g.WriteAuthorizedKeys(t, []string{`targets="c" ` + k.Line})
		start = time.Now()
		g.Reload(t)
		select {
		case <-sess.Done():
		case <-time.After(revokeBound + 500*time.Millisecond):
			t.Fatalf("session of a and b still up %s after both were taken away (bound %s)", time.Since(start), revokeBound)
		}
		t.Logf("%s: b's stream cut %s after the first reload; the session ended %s after the second (bound %s)",
			transport, took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), revokeBound)
	})
}
