package test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// configEndpoint stands in for an ElastiCache configuration endpoint: no
// real one runs here, so this tiny server speaks the part of its protocol
// that auto discovery uses. It answers "config get cluster" (and the
// legacy "get AmazonElastiCache:cluster") with its node list in
// ElastiCache's format, "version" with a version line, and anything else
// with ERROR, as memcached does.
type configEndpoint struct {
	Addr string
	ln   net.Listener

	mu      sync.Mutex // guards the following
	version int
	nodes   []string // "host|ip|port"
	queries int

	wg sync.WaitGroup
}

func startConfigEndpoint(t testing.TB, nodes ...*testenv.Memcached) *configEndpoint {
	t.Helper()
	e := &configEndpoint{ln: testenv.FreeLoopbackListener(t)}
	e.Addr = e.ln.Addr().String()
	e.SetNodes(nodes...)
	e.wg.Add(1)
	go e.serve()
	t.Cleanup(func() {
		e.ln.Close()
		e.wg.Wait()
	})
	return e
}

// SetNodes replaces the node list and bumps the config version, as
// ElastiCache does when nodes are added or removed. Node i is listed with
// the host name "sessions.xxxxxx.000i.use1.cache.amazonaws.com".
func (e *configEndpoint) SetNodes(nodes ...*testenv.Memcached) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.version++
	e.nodes = nil
	for i, m := range nodes {
		e.nodes = append(e.nodes, fmt.Sprintf("%s|127.0.0.1|%d", upstreamHostname(i), m.Port))
	}
}

func upstreamHostname(i int) string {
	return fmt.Sprintf("sessions.xxxxxx.%04d.use1.cache.amazonaws.com", i+1)
}

// Queries returns how many config requests the endpoint answered.
func (e *configEndpoint) Queries() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.queries
}

func (e *configEndpoint) body() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.queries++
	return fmt.Sprintf("%d\n%s\n", e.version, strings.Join(e.nodes, " "))
}

func (e *configEndpoint) serve() {
	defer e.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer c.Close()
			stop := context.AfterFunc(context.Background(), func() {})
			defer stop()
			br := bufio.NewReader(c)
			for {
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				var reply string
				switch strings.TrimSpace(line) {
				case "config get cluster":
					b := e.body()
					reply = fmt.Sprintf("CONFIG cluster 0 %d\r\n%s\r\nEND\r\n", len(b), b)
				case "get AmazonElastiCache:cluster":
					b := e.body()
					reply = fmt.Sprintf("VALUE AmazonElastiCache:cluster 0 %d\r\n%s\r\nEND\r\n", len(b), b)
				case "version":
					reply = "VERSION 1.6.22\r\n"
				case "quit":
					return
				default:
					reply = "ERROR\r\n"
				}
				if _, err := io.WriteString(c, reply); err != nil {
					return
				}
			}
		}()
	}
}

// discoveredNode is one entry of a config get cluster reply.
type discoveredNode struct{ Host, IP, Port string }

func (n discoveredNode) Addr() string { return net.JoinHostPort(n.IP, n.Port) }

// autoDiscover does what a discovery-aware memcached client does: it asks
// the configuration endpoint at addr for the nodes with cmd ("config get
// cluster" or "get AmazonElastiCache:cluster") and parses the reply.
func autoDiscover(t testing.TB, addr, cmd string) (int, []discoveredNode, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	header, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	f := strings.Fields(header)
	if len(f) != 4 || (f[0] != "CONFIG" && f[0] != "VALUE") {
		t.Fatalf("%s: header %q", cmd, header)
	}
	n, err := strconv.Atoi(f[3])
	if err != nil {
		t.Fatalf("%s: header %q", cmd, header)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatalf("%s: body: %v", cmd, err)
	}
	var trailer strings.Builder
	for !strings.HasSuffix(trailer.String(), "END\r\n") {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: trailer %q: %v", cmd, trailer.String(), err)
		}
		trailer.WriteString(l)
	}
	if trailer.String() != "\r\nEND\r\n" {
		t.Fatalf("%s: trailer %q, want \\r\\nEND\\r\\n", cmd, trailer.String())
	}
	lines := strings.Split(string(body), "\n")
	if len(lines) != 3 || lines[2] != "" {
		t.Fatalf("%s: body %q is not version\\nnodes\\n", cmd, body)
	}
	version, err := strconv.Atoi(lines[0])
	if err != nil {
		t.Fatalf("%s: version %q", cmd, lines[0])
	}
	var nodes []discoveredNode
	for _, e := range strings.Fields(lines[1]) {
		p := strings.Split(e, "|")
		if len(p) != 3 {
			t.Fatalf("%s: node %q", cmd, e)
		}
		nodes = append(nodes, discoveredNode{p[0], p[1], p[2]})
	}
	return version, nodes, header + string(body) + trailer.String()
}

// assertLocalNodes checks that a discovery reply names only local ports
// of c, nothing of the upstream side.
func assertLocalNodes(t testing.TB, c *connect, raw string, nodes []discoveredNode, want int) {
	t.Helper()
	if len(nodes) != want {
		t.Fatalf("discovery reply lists %d nodes, want %d:\n%s", len(nodes), want, raw)
	}
	local := localSet(c)
	for _, n := range nodes {
		if n.Host != n.IP || !local[n.Addr()] {
			t.Fatalf("discovery reply names %+v, not a local port of the client (local: %v):\n%s", n, localAddrs(c), raw)
		}
	}
	if strings.Contains(raw, "amazonaws.com") {
		t.Fatalf("discovery reply leaks an upstream host name:\n%s", raw)
	}
}

// TestMemcachedDiscovery: a memcached target whose node is an ElastiCache
// configuration endpoint. The gateway discovers the nodes behind it, the
// client opens a port per node, and a discovery-aware application asking
// the endpoint's local port sees only local addresses, which reach the
// right real memcached nodes. A node added later reaches the application
// through the same question.
func TestMemcachedDiscovery(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		var nodes []*testenv.Memcached
		for range 3 {
			nodes = append(nodes, testenv.StartMemcached(t))
		}
		ep := startConfigEndpoint(t, nodes...)
		k := newKey(t, "app@laptop")
		g := startGateway(t, map[string]*server.Target{"sessions": {
			Type: server.TypeMemcached, Nodes: []string{ep.Addr}, Discovery: server.DiscoveryElastiCache, Networks: loopbackNetworks,
			// Longer than the test: the added node must come because the
			// client asked.
			Refresh: time.Hour,
		}}, []string{k.Line})
		c := mustConnect(t, g, transport, "sessions", k)

		info := c.Client.Topology()
		if len(info.Nodes) != 4 || info.Nodes[0].Addr != ep.Addr || info.Nodes[0].Role != server.RoleConfig {
			t.Fatalf("topology: %+v, want the endpoint then 3 nodes", info.Nodes)
		}
		byAddr := make(map[string]control.NodeInfo)
		for _, n := range info.Nodes[1:] {
			byAddr[n.Addr] = n
		}
		for i, m := range nodes {
			if n := byAddr[m.Addr]; n.Role != server.RoleNode || n.ID != upstreamHostname(i) {
				t.Fatalf("node %d (%s): %+v, want role node, id %s", i, m.Addr, n, upstreamHostname(i))
			}
		}
		if out := c.Out.String(); !strings.Contains(out, "->  "+ep.Addr+"  config") {
			t.Errorf("listener table: %q", out)
		}

		endpoint := c.Local(t, ep.Addr)
		for _, cmd := range []string{"config get cluster", "get AmazonElastiCache:cluster"} {
			version, found, raw := autoDiscover(t, endpoint, cmd)
			if version != 1 {
				t.Fatalf("%s: version %d, want 1 (the endpoint's)", cmd, version)
			}
			assertLocalNodes(t, c, raw, found, 3)
		}
		// The application uses the nodes it discovered; each key lands on
		// the real node behind that port.
		// The endpoint lists the nodes in its order (node i is memcached
		// i), and so does the rewritten reply.
		_, found, _ := autoDiscover(t, endpoint, "config get cluster")
		for i, n := range found {
			key := fmt.Sprintf("session-%d", i)
			mcSet(t, n.Addr(), key, "v"+strconv.Itoa(i))
			if got, ok := nodes[i].Get(t, key); !ok || got != "v"+strconv.Itoa(i) {
				t.Fatalf("key set through discovered node %d is not on memcached %d: %q %v", i, i, got, ok)
			}
			if c.Local(t, nodes[i].Addr) != n.Addr() {
				t.Fatalf("discovered node %d is %s, but memcached %d is on local port %s", i, n.Addr(), i, c.Local(t, nodes[i].Addr))
			}
		}

		// The cluster grows: the endpoint lists a fourth node with a new
		// version. The client has no port for it yet; the application's
		// next question makes the client ask the gateway, which
		// rediscovers and pushes, and the answer names the new port.
		m4 := testenv.StartMemcached(t)
		ep.SetNodes(append(nodes, m4)...)
		version, found, raw := autoDiscover(t, endpoint, "config get cluster")
		if version != 2 {
			t.Fatalf("version after the change: %d, want 2", version)
		}
		assertLocalNodes(t, c, raw, found, 4)
		mcSet(t, found[3].Addr(), "newcomer", "hello")
		if got, ok := m4.Get(t, "newcomer"); !ok || got != "hello" {
			t.Fatalf("key set through the new node's port: %q %v", got, ok)
		}
		c.Log.waitLog(t, "new node: local port opened")
		if !strings.Contains(c.Log.String(), "asking the gateway to refresh") {
			t.Errorf("the new node did not come through the client's refresh request")
		}

		// Data ports are plain relays: a stored value that looks like a
		// discovery reply comes back byte for byte.
		tricky := "CONFIG cluster 0 9\r\n1\nh|" + nodes[0].Addr
		mcSet(t, found[0].Addr(), "tricky", tricky)
		if got, ok := nodes[0].Get(t, "tricky"); !ok || got != tricky {
			t.Fatalf("tricky value: %q", got)
		}
	})
}

// TestMemcachedDiscovery_NotAnEndpoint: with discovery on, a node that is
// no configuration endpoint (a plain memcached answers ERROR) keeps the
// configured node, says why in the gateway's log, and still works.
func TestMemcachedDiscovery_NotAnEndpoint(t *testing.T) {
	m := testenv.StartMemcached(t)
	k := newKey(t, "app@laptop")
	g := startGateway(t, map[string]*server.Target{"sessions": {
		Type: server.TypeMemcached, Nodes: []string{m.Addr}, Discovery: server.DiscoveryElastiCache, Networks: loopbackNetworks,
	}}, []string{k.Line})
	c := mustConnect(t, g, transports[0], "sessions", k)
	g.Log.waitLog(t, "discovery failed")
	if !strings.Contains(g.Log.String(), "not an ElastiCache configuration endpoint") {
		t.Errorf("gateway log does not say why discovery failed")
	}
	info := c.Client.Topology()
	if len(info.Nodes) != 1 || info.Nodes[0].Addr != m.Addr {
		t.Fatalf("topology: %+v", info.Nodes)
	}
	mcSet(t, c.Local(t, m.Addr), "k", "v")
	// The configuration port is rewritten, but a plain node's ERROR goes
	// through unchanged, and so does everything else.
	conn, err := net.DialTimeout("tcp", c.Local(t, m.Addr), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "config get cluster\r\nget k\r\n")
	br := bufio.NewReader(conn)
	var got []string
	for len(got) < 4 {
		l, err := br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatal(err)
		}
		got = append(got, l)
	}
	if want := []string{"ERROR\r\n", "VALUE k 0 1\r\n", "v\r\n", "END\r\n"}; strings.Join(got, "") != strings.Join(want, "") {
		t.Fatalf("replies %q, want %q", got, want)
	}
}
