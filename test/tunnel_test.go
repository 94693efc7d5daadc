package test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
	"github.com/cachetun/cachetun/tunnel"
)

// redisCLI runs the real redis-cli against a local address.
func redisCLI(t testing.TB, addr string, args ...string) string {
	t.Helper()
	cli := testenv.RequireBinary(t, "redis-cli")
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func redisTarget(r *testenv.Redis) map[string]*server.Target {
	return map[string]*server.Target{"cache": {Type: server.TypeRedis, Nodes: []string{r.Addr}}}
}

// TestTunnel_RedisCLI: redis-cli SET/GET through the tunnel, on every
// transport, and the server's audit log names the stream.
func TestTunnel_RedisCLI(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		r := testenv.StartRedis(t)
		k := newKey(t, "alice@laptop")
		g := startGateway(t, redisTarget(r), []string{k.Line})
		c := mustConnect(t, g, transport, "cache", k)
		local := c.Local(t, r.Addr)

		if got := redisCLI(t, local, "SET", "greeting", "hello through "+transport); got != "OK" {
			t.Fatalf("SET: got %q, want OK", got)
		}
		if got := redisCLI(t, local, "GET", "greeting"); got != "hello through "+transport {
			t.Fatalf("GET: got %q", got)
		}
		if got := r.Client(t).Get(context.Background(), "greeting").Val(); got != "hello through "+transport {
			t.Fatalf("value on the real redis: got %q", got)
		}
		if out := c.Out.String(); !strings.Contains(out, "cache  redis  via "+transport) || !strings.Contains(out, "->  "+r.Addr) {
			t.Fatalf("listener table: got %q", out)
		}
		g.Log.waitLog(t, "msg=stream")
		log := g.Log.String()
		for _, want := range []string{"alice@laptop", "target=cache", "node=" + r.Addr, "result=ok", "bytes_up=", "bytes_down="} {
			if !strings.Contains(log, want) {
				t.Errorf("audit log lacks %q", want)
			}
		}
	})
}

// TestTunnel_MemcachedNodes: each local port of a 3-node memcached target
// reaches its own node.
func TestTunnel_MemcachedNodes(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		var nodes []*testenv.Memcached
		var addrs []string
		for i := 0; i < 3; i++ {
			m := testenv.StartMemcached(t)
			nodes = append(nodes, m)
			addrs = append(addrs, m.Addr)
		}
		k := newKey(t, "bob")
		g := startGateway(t, map[string]*server.Target{"sessions": {Type: server.TypeMemcached, Nodes: addrs}}, []string{k.Line})
		c := mustConnect(t, g, transport, "sessions", k)
		for i, m := range nodes {
			key := fmt.Sprintf("k%d", i)
			val := fmt.Sprintf("value-of-node-%d", i)
			mcSet(t, c.Local(t, m.Addr), key, val)
			if got, ok := m.Get(t, key); !ok || got != val {
				t.Fatalf("node %d read directly: got %q %v, want %q", i, got, ok, val)
			}
			for j, other := range nodes {
				if j != i {
					if _, ok := other.Get(t, key); ok {
						t.Fatalf("key written through node %d's port landed on node %d", i, j)
					}
				}
			}
		}
	})
}

// mcSet stores key=val through the memcached text protocol at addr.
func mcSet(t testing.TB, addr, key, val string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "set %s 0 0 %d\r\n%s\r\n", key, len(val), val)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "STORED\r\n" {
		t.Fatalf("memcached set through %s: %q, %v", addr, line, err)
	}
}

// TestTunnel_Refusals: every refusal names the problem, and the cache sees
// no connection at all.
func TestTunnel_Refusals(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		r := testenv.StartRedis(t)
		good := newKey(t, "good")
		stranger := newKey(t, "stranger")
		expired := newKey(t, "expired")
		elsewhere := newKey(t, "elsewhere")
		narrow := newKey(t, "narrow")
		targets := redisTarget(r)
		targets["other"] = &server.Target{Type: server.TypeTCP, Nodes: []string{"127.0.0.1:9"}}
		g := startGateway(t, targets, []string{
			good.Line,
			`expiry-time="20200101" ` + expired.Line,
			`from="10.0.0.0/8,192.0.2.7" ` + elsewhere.Line,
			`targets="other" ` + narrow.Line,
		})
		before := r.TotalConnections(t)

		cases := []struct {
			name string
			key  key
			opts []connectOpt
			want []string
		}{
			{"unknown key", stranger, nil, []string{"not", "authorized_keys", auth.Fingerprint(stranger.Pub)}},
			{"expired key", expired, nil, []string{"expired"}},
			{"from mismatch", elsewhere, nil, []string{"127.0.0.1"}},
			{"target not allowed", narrow, nil, []string{`may not use target "cache"`, "other"}},
			{"unknown target", good, []connectOpt{func(o *client.Options) { o.Target = "nosuch" }}, []string{`target "nosuch" is not configured`}},
			{"wrong host key", good, []connectOpt{func(o *client.Options) { o.KnownHosts = wrongKnownHosts(t, g) }}, []string{"host key", "changed"}},
			{"unknown host key", good, []connectOpt{func(o *client.Options) { o.KnownHosts = filepath.Join(t.TempDir(), "empty") }}, []string{"not known", "--accept-new-host-key"}},
		}
		for _, tc := range cases {
			t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
				_, err := startConnect(t, g, transport, "cache", tc.key, tc.opts...)
				if err == nil {
					t.Fatal("connect succeeded, want a refusal")
				}
				msg := errText(err)
				for _, w := range tc.want {
					if !strings.Contains(msg, w) {
						t.Errorf("error %q does not mention %q", msg, w)
					}
				}
			})
		}
		if after := r.TotalConnections(t); after != before {
			t.Fatalf("redis saw %d connections during refusals, want 0", after-before)
		}
	})
}

// wrongKnownHosts pins another key for the gateway's addresses.
func wrongKnownHosts(t testing.TB, g *gateway) string {
	t.Helper()
	other := newKey(t, "impostor")
	path := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(path, []byte(knownHostsLine(g.Addr, other.Pub)+knownHostsLine(g.SSHAddr, other.Pub)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestTunnel_NotAnOpenProxy: a stream to an address that is no node of any
// target is refused before anything is dialled, and logged.
func TestTunnel_NotAnOpenProxy(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		r := testenv.StartRedis(t)
		k := newKey(t, "mallory")
		g := startGateway(t, redisTarget(r), []string{k.Line})
		cl, err := client.New(client.Options{
			Servers: []string{g.ServerAddr(transport)}, Target: "cache", Transport: transport,
			Identity: k.Path, KnownHosts: g.KnownHosts(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sess, _, err := cl.Dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		before := r.TotalConnections(t)
		for _, req := range []tunnel.OpenRequest{
			{Kind: tunnel.KindProxy, Target: "cache", Node: "169.254.169.254:80"},
			{Kind: tunnel.KindProxy, Target: "nosuch", Node: r.Addr},
			{Kind: tunnel.KindProxy, Target: "", Node: "169.254.169.254:80"},
		} {
			st, err := sess.OpenStream(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = st.Write([]byte("GET / HTTP/1.0\r\n\r\n")) // early data must be dropped
			_, err = st.Read(make([]byte, 1))
			var se *tunnel.StatusError
			if !errors.As(err, &se) || (se.Code != tunnel.StatusUnknownNode && se.Code != tunnel.StatusUnknownTarget) {
				t.Fatalf("stream to %+v: got %v, want a refusal", req, err)
			}
			st.Close()
		}
		if after := r.TotalConnections(t); after != before {
			t.Fatalf("redis saw %d connections", after-before)
		}
		g.Log.waitLog(t, "169.254.169.254:80")
		if log := g.Log.String(); !strings.Contains(log, "stream refused") {
			t.Fatalf("refusal not logged: %s", log)
		}
	})
}

// TestTunnel_KeyFilePermissions: a key readable by group or others is
// refused with the chmod that fixes it.
func TestTunnel_KeyFilePermissions(t *testing.T) {
	k := newKey(t, "loose")
	if err := os.Chmod(k.Path, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err := client.New(client.Options{Servers: []string{"127.0.0.1:1"}, Target: "cache", Identity: k.Path})
	if err == nil {
		t.Fatal("client accepted a group-readable key")
	}
	msg := errText(err)
	for _, want := range []string{"too open", "chmod 600"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
}

// TestTunnel_Reconnect: the gateway dies and comes back; the same local
// ports work again without restarting connect, and a connection made while
// it is down waits instead of failing.
func TestTunnel_Reconnect(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		r := testenv.StartRedis(t)
		k := newKey(t, "carol")
		g := startGateway(t, redisTarget(r), []string{k.Line})
		c := mustConnect(t, g, transport, "cache", k)
		local := c.Local(t, r.Addr)
		if got := redisCLI(t, local, "SET", "x", "1"); got != "OK" {
			t.Fatalf("SET before restart: %q", got)
		}
		g.Kill()
		waitFor(t, 10*time.Second, "connect to notice the session is lost", func() bool { return !c.Client.Status().Connected })

		// A connection made while the gateway is down waits for it.
		type res struct {
			out string
			err error
		}
		done := make(chan res, 1)
		go func() {
			cli, _ := exec.LookPath("redis-cli")
			host, port, _ := net.SplitHostPort(local)
			out, err := exec.Command(cli, "-h", host, "-p", port, "GET", "x").CombinedOutput()
			done <- res{strings.TrimSpace(string(out)), err}
		}()
		// The connection has arrived while the gateway is down: connect
		// holds it, waiting for a session.
		waitFor(t, 10*time.Second, "connect to hold the connection made during the outage", func() bool {
			return c.Client.OpenConns() == 1
		})
		g.Restart(t)
		select {
		case got := <-done:
			if got.err != nil || got.out != "1" {
				t.Fatalf("GET made during the outage: %q, %v", got.out, got.err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("connection made during the outage never completed")
		}
		if got := redisCLI(t, local, "GET", "x"); got != "1" {
			t.Fatalf("GET after restart on the same port: %q", got)
		}
	})
}
