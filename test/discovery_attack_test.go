package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/test/testenv"
)

// Issue 10, finding 1: a user of a cluster target re-announces a node she
// can reach through her tunnel (CONFIG SET cluster-announce-*) toward an
// address of her choosing. The gateway must neither publish that address
// nor connect to it (so it never gets the cluster password), and the
// cluster keeps working. All against the real binary.

// trapHost is where the fake metadata service listens: a loopback
// address outside the test targets' networks (127.0.0.1/32).
const trapHost = "127.0.0.2"

// trap stands in for a cloud metadata service (169.254.169.254 cannot be
// bound outside a network namespace, and no real one runs here): a TCP
// listener that answers like one and records every connection and byte.
// Each connection is attributed, through /proc, to the gateway process
// (set Gateway once it runs) or to someone else: the laptop side of the
// test runs go-redis, which dials whatever a CLUSTER reply names.
type trap struct {
	Addr string
	Port int
	// Gateway is the pid of the gateway process, once it runs.
	Gateway atomic.Int64

	fromGateway atomic.Int64
	fromOthers  atomic.Int64
	mu          sync.Mutex // guards got
	got         bytes.Buffer
}

func startTrap(t testing.TB) *trap {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(trapHost, "0"))
	if err != nil {
		t.Fatalf("listen on %s (the fake metadata service): %v", trapHost, err)
	}
	tr := &trap{Addr: ln.Addr().String(), Port: ln.Addr().(*net.TCPAddr).Port}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Attribute the connection while its dialler still holds it:
			// nothing is answered before.
			if pid := tr.Gateway.Load(); pid != 0 && pidOwnsSocket(int(pid), c.RemoteAddr().(*net.TCPAddr)) {
				tr.fromGateway.Add(1)
			} else {
				tr.fromOthers.Add(1)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 4096)
				n, _ := c.Read(buf)
				tr.mu.Lock()
				tr.got.Write(buf[:n])
				tr.mu.Unlock()
				_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\nServer: EC2ws\r\n\r\nami-id\ninstance-id\n")
			}()
		}
	}()
	return tr
}

func (tr *trap) received() string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.got.String()
}

// pidOwnsSocket reports whether process pid holds the IPv4 TCP socket
// whose local end is local (/proc/net/tcp gives its inode, /proc/PID/fd
// its holder).
func pidOwnsSocket(pid int, local *net.TCPAddr) bool {
	ip := local.IP.To4()
	if ip == nil {
		return false
	}
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], local.Port)
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return false
	}
	inode := ""
	for _, l := range strings.Split(string(b), "\n")[1:] {
		// An old TIME_WAIT entry may share the local address: it has no
		// inode (0) and belongs to nobody.
		if f := strings.Fields(l); len(f) > 9 && f[1] == want && f[9] != "0" {
			inode = f[9]
		}
	}
	if inode == "" {
		return false
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && link == "socket:["+inode+"]" {
			return true
		}
	}
	return false
}

// checkSocketAttribution proves pidOwnsSocket right before a test relies
// on it: a connection of this process is its own, and not init's.
func checkSocketAttribution(t testing.TB) {
	t.Helper()
	ln := testenv.FreeLoopbackListener(t)
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := c.LocalAddr().(*net.TCPAddr)
	if !pidOwnsSocket(os.Getpid(), local) || pidOwnsSocket(1, local) {
		t.Fatalf("socket attribution through /proc does not work here")
	}
}

var metricsAddrRE = regexp.MustCompile(`http://(127\.0\.0\.1:\d+)/metrics`)

// scrapeCounter returns the value of the series name{labels...} on the
// gateway's /metrics (0 when absent).
func scrapeCounter(t testing.TB, g *gatewayProc, name string, labels ...string) float64 {
	t.Helper()
	m := metricsAddrRE.FindStringSubmatch(g.Log())
	if m == nil {
		t.Fatalf("the gateway logged no metrics address:\n%s", g.Log())
	}
	resp, err := http.Get("http://" + m[1] + "/metrics")
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(line, labels[i]+`="`+labels[i+1]+`"`) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		total += v
	}
	return total
}

// waitRounds waits until the gateway has finished n more successful
// discovery rounds of target, so that a test can say "after refreshes"
// without sleeping.
func waitRounds(t testing.TB, g *gatewayProc, target string, n int) {
	t.Helper()
	start := scrapeCounter(t, g, "cachetun_discovery_rounds_total", "target", target, "result", "ok")
	waitFor(t, 30*time.Second, fmt.Sprintf("%d more discovery rounds of %s", n, target), func() bool {
		return scrapeCounter(t, g, "cachetun_discovery_rounds_total", "target", target, "result", "ok") >= start+float64(n)
	})
}

// refusalLines counts the gateway's log lines that refuse node (with id,
// when given) for reason.
func refusalLines(g *gatewayProc, node, id, reason string) int {
	n := 0
	for _, l := range strings.Split(g.Log(), "\n") {
		if strings.Contains(l, "discovered node refused") && strings.Contains(l, "node="+node+" ") &&
			strings.Contains(l, "reason="+reason) && (id == "" || strings.Contains(l, "id="+id)) {
			n++
		}
	}
	return n
}

// topologyWatch samples what the client is told until the test ends and
// remembers any node that matches bad.
type topologyWatch struct {
	mu   sync.Mutex
	seen []control.NodeInfo
	n    atomic.Int64
}

func watchTopology(t *testing.T, c *connect, bad func(addr string) bool) *topologyWatch {
	w := &topologyWatch{}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			for _, n := range c.Client.Topology().Nodes {
				if bad(n.Addr) {
					w.mu.Lock()
					w.seen = append(w.seen, n)
					w.mu.Unlock()
				}
			}
			for a := range c.Client.LocalAddrs() {
				if bad(a) {
					w.mu.Lock()
					w.seen = append(w.seen, control.NodeInfo{Addr: a, Role: "(local port)"})
					w.mu.Unlock()
				}
			}
			w.n.Add(1)
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return w
}

func (w *topologyWatch) check(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.seen) > 0 {
		t.Fatalf("the client was told about %d forbidden nodes, first %+v", len(w.seen), w.seen[0])
	}
	if w.n.Load() < 10 {
		t.Fatalf("only %d topology samples: the watch did not run", w.n.Load())
	}
}

// tunnelDo runs one command on node through the client's local port for
// it, as the user would with redis-cli: the gateway adds the AUTH.
func tunnelDo(t testing.TB, c *connect, node string, args ...any) {
	t.Helper()
	rc := redis.NewClient(&redis.Options{Addr: c.Local(t, node), MaxRetries: -1, DisableIdentity: true, Protocol: 2})
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rc.Do(ctx, args...).Err(); err != nil {
		t.Fatalf("%v on %s through the tunnel: %v", args, node, err)
	}
}

// adminDo runs one command on r directly (the test's own housekeeping).
func adminDo(t testing.TB, r *testenv.Redis, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Client(t).Do(ctx, args...).Err(); err != nil {
		t.Fatalf("%v on %s: %v", args, r.Addr, err)
	}
}

// seesNode reports whether the cluster, asked at r, lists node id at
// addr in CLUSTER SHARDS.
func seesNode(t testing.TB, r *testenv.Redis, id, addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	shards, err := r.Client(t).ClusterShards(ctx).Result()
	if err != nil {
		return false
	}
	host, port, _ := net.SplitHostPort(addr)
	for _, sh := range shards {
		for _, n := range sh.Nodes {
			h := n.Endpoint
			if h == "" || h == "?" {
				h = n.IP
			}
			if n.ID == id && h == host && strconv.FormatInt(n.Port, 10) == port {
				return true
			}
		}
	}
	return false
}

// clusterTrafficOK writes and reads keys over every slot range through the
// tunnel with go-redis.
func clusterTrafficOK(t testing.TB, c *connect, prefix string) {
	t.Helper()
	cc := tunnelClusterClient(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, k := range clusterKeys(prefix, 60) {
		if err := cc.Set(ctx, k, "v-"+k, 0).Err(); err != nil {
			t.Fatalf("SET %s through the tunnel: %v", k, err)
		}
		if got, err := cc.Get(ctx, k).Result(); err != nil || got != "v-"+k {
			t.Fatalf("GET %s through the tunnel: %q, %v", k, got, err)
		}
	}
}

// TestDiscovery_ReannouncedNodeRefused reproduces finding 1 of issue 10 on
// a real 6-node Redis Cluster behind the real gateway binary: through her
// tunnel, a user re-announces a replica (announce-ip, then
// announce-hostname with cluster-preferred-endpoint-type hostname) at a
// fake metadata listener on 127.0.0.2, outside the target's networks
// (127.0.0.1/32); then, as the issue words it, at hostname
// 169.254.169.254 port 80 (refused as link_local, so never dialled);
// then at the port of another redis-server inside the
// networks, which is not that cluster node. Each time the gateway refuses
// the node (logged once with its reason, counted in
// cachetun_discovery_rejected_nodes_total), the client is never told of
// it, the fake listener gets no connection (so no password), the cluster
// keeps serving every slot through the tunnel, and the node comes back
// once it announces its real address again.
func TestDiscovery_ReannouncedNodeRefused(t *testing.T) {
	pw := randomSecret(t)
	cl := testenv.StartCluster(t, 3, 1, "--requirepass", pw)
	checkSocketAttribution(t)
	tr := startTrap(t)
	// Another redis-server inside the networks: a cluster node of no
	// cluster, with the same password (so AUTH passes and only the id
	// can tell it apart).
	bus := testenv.FreeLoopbackListener(t)
	busPort := strconv.Itoa(bus.Addr().(*net.TCPAddr).Port)
	bus.Close()
	other := testenv.StartRedis(t, "--cluster-enabled", "yes", "--cluster-announce-ip", "127.0.0.1",
		"--cluster-port", busPort, "--requirepass", pw)
	seed := cl.Nodes[0]
	k := newKey(t, "dev@laptop")
	g := startGatewayProc(t, gatewayProcOpts{
		Targets: map[string]string{"prod": fmt.Sprintf(`{type: redis-cluster, nodes: [%q], networks: ["127.0.0.1/32"], refresh: 1s, auth: {password_file: %q}}`,
			seed.Addr, writeSecret(t, pw))},
		Authorized: []string{k.Line},
		Extra:      "metrics: \"127.0.0.1:0\"\n",
		NoSSH:      true,
	})
	tr.Gateway.Store(int64(g.PID()))
	c := mustConnect(t, g, "tls", "prod", k)
	waitFor(t, 20*time.Second, "6 nodes in the client's topology", func() bool { return len(c.Client.Topology().Nodes) == 6 })
	watch := watchTopology(t, c, func(addr string) bool {
		host, port, _ := net.SplitHostPort(addr)
		return host == trapHost || host == "169.254.169.254" || port == strconv.Itoa(tr.Port) || port == strconv.Itoa(other.Port)
	})
	var victims []*testenv.Redis
	for _, m := range cl.Masters(t) {
		for _, r := range cl.Replicas(t, m) {
			if r != seed {
				victims = append(victims, r)
			}
		}
	}
	if len(victims) < 2 {
		t.Fatalf("%d replicas besides the seed, want 2", len(victims))
	}
	v1, v2 := victims[0], victims[1]
	trapAddr := tr.Addr

	// refusedThenBack asserts the refusal of node (announced under id) for
	// reason, then undoes the re-announcement and waits for the real node
	// to be published again.
	refusedThenBack := func(t *testing.T, v *testenv.Redis, node, reason string, undo func()) {
		t.Helper()
		waitFor(t, 30*time.Second, "the cluster to announce "+node, func() bool { return seesNode(t, seed, v.ClusterID(), node) })
		waitFor(t, 30*time.Second, "the gateway to refuse "+node, func() bool { return refusalLines(g, node, v.ClusterID(), reason) > 0 })
		waitRounds(t, g, "prod", 3)
		if n := refusalLines(g, node, v.ClusterID(), reason); n != 1 {
			t.Errorf("the refusal of %s was logged %d times over 3 more rounds, want once", node, n)
		}
		if n := scrapeCounter(t, g, "cachetun_discovery_rejected_nodes_total", "target", "prod", "reason", reason); n < 1 {
			t.Errorf("cachetun_discovery_rejected_nodes_total{reason=%q} = %v, want >= 1", reason, n)
		}
		for _, n := range c.Client.Topology().Nodes {
			if n.Addr == node || n.ID == v.ClusterID() {
				t.Fatalf("the client's topology holds the re-announced node: %+v", n)
			}
		}
		clusterTrafficOK(t, c, "during-"+reason)
		undo()
		waitFor(t, 30*time.Second, v.Addr+" back in the client's topology", func() bool {
			for _, n := range c.Client.Topology().Nodes {
				if n.Addr == v.Addr && n.ID == v.ClusterID() {
					return true
				}
			}
			return false
		})
	}

	t.Run("AnnounceIP", func(t *testing.T) {
		tunnelDo(t, c, v1.Addr, "CONFIG", "SET", "cluster-announce-ip", trapHost)
		tunnelDo(t, c, v1.Addr, "CONFIG", "SET", "cluster-announce-port", tr.Port)
		refusedThenBack(t, v1, trapAddr, "loopback", func() {
			adminDo(t, v1, "CONFIG", "SET", "cluster-announce-ip", "127.0.0.1")
			adminDo(t, v1, "CONFIG", "SET", "cluster-announce-port", 0)
		})
	})

	t.Run("AnnounceHostname", func(t *testing.T) {
		// Every node names itself by a host name (its IP, as no DNS name
		// resolves to the test's addresses) and every node answers with
		// host names, so that only the victim points elsewhere.
		for _, r := range cl.Nodes {
			tunnelDo(t, c, r.Addr, "CONFIG", "SET", "cluster-announce-hostname", "127.0.0.1")
			tunnelDo(t, c, r.Addr, "CONFIG", "SET", "cluster-preferred-endpoint-type", "hostname")
		}
		tunnelDo(t, c, v2.Addr, "CONFIG", "SET", "cluster-announce-hostname", trapHost)
		tunnelDo(t, c, v2.Addr, "CONFIG", "SET", "cluster-announce-port", tr.Port)
		refusedThenBack(t, v2, trapAddr, "loopback", func() {
			adminDo(t, v2, "CONFIG", "SET", "cluster-announce-hostname", "127.0.0.1")
			adminDo(t, v2, "CONFIG", "SET", "cluster-announce-port", 0)
		})
		for _, r := range cl.Nodes {
			adminDo(t, r, "CONFIG", "SET", "cluster-preferred-endpoint-type", "ip")
			adminDo(t, r, "CONFIG", "SET", "cluster-announce-hostname", "")
		}
	})

	t.Run("MetadataHostname", func(t *testing.T) {
		// The words: cluster-announce-hostname 169.254.169.254,
		// cluster-announce-port 80, cluster-preferred-endpoint-type
		// hostname, through the tunnel. Nothing listens there (outside a
		// network namespace): the address is refused before any dial.
		for _, r := range cl.Nodes {
			tunnelDo(t, c, r.Addr, "CONFIG", "SET", "cluster-announce-hostname", "127.0.0.1")
			tunnelDo(t, c, r.Addr, "CONFIG", "SET", "cluster-preferred-endpoint-type", "hostname")
		}
		tunnelDo(t, c, v2.Addr, "CONFIG", "SET", "cluster-announce-hostname", "169.254.169.254")
		tunnelDo(t, c, v2.Addr, "CONFIG", "SET", "cluster-announce-port", 80)
		refusedThenBack(t, v2, "169.254.169.254:80", "link_local", func() {
			adminDo(t, v2, "CONFIG", "SET", "cluster-announce-hostname", "127.0.0.1")
			adminDo(t, v2, "CONFIG", "SET", "cluster-announce-port", 0)
		})
		for _, r := range cl.Nodes {
			adminDo(t, r, "CONFIG", "SET", "cluster-preferred-endpoint-type", "ip")
			adminDo(t, r, "CONFIG", "SET", "cluster-announce-hostname", "")
		}
	})

	t.Run("OtherRedisServer", func(t *testing.T) {
		// Inside the networks, but the server there is not that node:
		// CLUSTER MYID gives it away.
		node := net.JoinHostPort("127.0.0.1", strconv.Itoa(other.Port))
		tunnelDo(t, c, v1.Addr, "CONFIG", "SET", "cluster-announce-port", other.Port)
		refusedThenBack(t, v1, node, "id_mismatch", func() {
			adminDo(t, v1, "CONFIG", "SET", "cluster-announce-port", 0)
		})
	})

	watch.check(t)
	if n := tr.fromGateway.Load(); n != 0 {
		t.Fatalf("the fake metadata service got %d connections from the gateway (received %q), want 0", n, tr.received())
	}
	if strings.Contains(tr.received(), pw) {
		t.Fatal("the fake metadata service received the cluster password")
	}
	// go-redis on the laptop side reloads its slot map from any node a
	// CLUSTER reply names, the refused one too: those dials are the
	// test's own process, not the gateway (and hold no password).
	t.Logf("connections to the fake metadata service: %d from the gateway, %d from the test's own go-redis", tr.fromGateway.Load(), tr.fromOthers.Load())
	if strings.Contains(g.Log(), pw) {
		t.Fatal("the gateway's log holds the cluster password")
	}
	clusterTrafficOK(t, c, "after")
}

// TestDiscovery_ElastiCacheListsMetadata: a fake ElastiCache
// configuration endpoint (no real one runs here) lists, beside two real
// memcached nodes, the metadata service 169.254.169.254:80 and the fake
// metadata listener on 127.0.0.2, outside the target's networks. The
// gateway binary publishes the real nodes only, logs both refusals with
// their reasons, and never connects to the listener.
func TestDiscovery_ElastiCacheListsMetadata(t *testing.T) {
	m1, m2 := testenv.StartMemcached(t), testenv.StartMemcached(t)
	ep := startConfigEndpoint(t)
	tr := startTrap(t)
	ep.setEntries(
		fmt.Sprintf("%s|127.0.0.1|%d", upstreamHostname(0), m1.Port),
		fmt.Sprintf("%s|127.0.0.1|%d", upstreamHostname(1), m2.Port),
		"x|169.254.169.254|80",
		fmt.Sprintf("y|%s|%d", trapHost, tr.Port),
	)
	k := newKey(t, "app@laptop")
	g := startGatewayProc(t, gatewayProcOpts{
		Targets:    map[string]string{"sessions": fmt.Sprintf(`{type: memcached, discovery: elasticache, nodes: [%q], networks: ["127.0.0.1/32"], refresh: 1s}`, ep.Addr)},
		Authorized: []string{k.Line},
		Extra:      "metrics: \"127.0.0.1:0\"\n",
		NoSSH:      true,
	})
	tr.Gateway.Store(int64(g.PID()))
	c := mustConnect(t, g, "tls", "sessions", k)
	waitFor(t, 20*time.Second, "both refusals in the gateway's log", func() bool {
		return refusalLines(g, "169.254.169.254:80", "", "link_local") > 0 && refusalLines(g, tr.Addr, "", "loopback") > 0
	})
	waitRounds(t, g, "sessions", 3)
	if a, b := refusalLines(g, "169.254.169.254:80", "", "link_local"), refusalLines(g, tr.Addr, "", "loopback"); a != 1 || b != 1 {
		t.Errorf("refusals logged %d and %d times over 3 more rounds, want once each", a, b)
	}
	for reason, want := range map[string]float64{"link_local": 1, "loopback": 1} {
		if n := scrapeCounter(t, g, "cachetun_discovery_rejected_nodes_total", "target", "sessions", "reason", reason); n != want {
			t.Errorf("cachetun_discovery_rejected_nodes_total{reason=%q} = %v, want %v", reason, n, want)
		}
	}
	info := c.Client.Topology()
	var addrs []string
	for _, n := range info.Nodes {
		addrs = append(addrs, n.Addr)
	}
	if len(addrs) != 3 || addrs[0] != ep.Addr || !slices.Contains(addrs, m1.Addr) || !slices.Contains(addrs, m2.Addr) {
		t.Fatalf("topology %v, want the endpoint %s then the real nodes %s and %s", addrs, ep.Addr, m1.Addr, m2.Addr)
	}
	// The real nodes work through the tunnel.
	for _, m := range []*testenv.Memcached{m1, m2} {
		conn, err := net.DialTimeout("tcp", c.Local(t, m.Addr), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, "set k 0 0 1\r\nv\r\n"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8)
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "STORED\r\n" {
			t.Fatalf("set through the tunnel to %s: %q %v", m.Addr, buf, err)
		}
		conn.Close()
		if v, ok := m.Get(t, "k"); !ok || v != "v" {
			t.Fatalf("%s holds %q %v, want the value written through the tunnel", m.Addr, v, ok)
		}
	}
	if n, m := tr.fromGateway.Load(), tr.fromOthers.Load(); n != 0 || m != 0 {
		t.Fatalf("the fake metadata listener got %d connections from the gateway and %d from elsewhere, want 0", n, m)
	}
}

// setEntries replaces the endpoint's node list with raw "host|ip|port"
// entries.
func (e *configEndpoint) setEntries(entries ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.version++
	e.nodes = entries
}

// TestUpstream_AuthReplyNotEchoed: a node that answers the gateway's AUTH
// with arbitrary bytes (a fake: no real cache answers so; here, what the
// metadata service would) makes the stream fail with a sentence of
// cachetun's own. The client's refusal holds none of those bytes, and the
// gateway's log at most a short sanitised prefix.
func TestUpstream_AuthReplyNotEchoed(t *testing.T) {
	const secret = "ASIAFAKEACCESSKEYID"
	ln := testenv.FreeLoopbackListener(t)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 512)
				_, _ = c.Read(buf)
				_, _ = io.WriteString(c, "HTTP/1.0 200 OK \x1b[31m"+strings.Repeat("A", 80)+secret+"\r\nServer: EC2ws\r\n\r\n{\"AccessKeyId\":\""+secret+"\"}\n")
			}()
		}
	}()
	k := newKey(t, "dev@laptop")
	g := startGatewayProc(t, gatewayProcOpts{
		Targets:    map[string]string{"cache": fmt.Sprintf(`{type: redis, nodes: [%q], auth: {password_file: %q}}`, ln.Addr().String(), writeSecret(t, randomSecret(t)))},
		Authorized: []string{k.Line},
		NoSSH:      true,
	})
	c := mustConnect(t, g, "tls", "cache", k)
	// The client resets a local connection whose stream the gateway
	// refused (tunnel.Relay aborts both sides); on a busy machine that
	// reset can come before this dial has seen its connect complete, and
	// the dial then fails with ECONNRESET: the refusal came all the same.
	var got []byte
	conn, err := net.DialTimeout("tcp", c.Local(t, ln.Addr().String()), 5*time.Second)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
	case err != nil:
		t.Fatal(err)
	default:
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(conn, "PING\r\n")
		got, _ = io.ReadAll(conn)
	}
	waitFor(t, 10*time.Second, "the client to log the refusal", func() bool {
		return strings.Contains(c.Log.String(), "gateway refused the connection")
	})
	clientSide := c.Log.String() + c.Out.String() + string(got)
	for _, leak := range []string{"HTTP", "EC2ws", secret, "\x1b"} {
		if strings.Contains(clientSide, leak) {
			t.Errorf("the client saw %q from the upstream:\n%s", leak, clientSide)
		}
	}
	if !strings.Contains(c.Log.String(), "refused the gateway's credentials") {
		t.Errorf("the client's log lacks cachetun's sentence:\n%s", c.Log.String())
	}
	log := g.Log()
	if strings.Contains(log, secret) || strings.Contains(log, "EC2ws") || strings.Contains(log, "\x1b") {
		t.Errorf("the gateway's log holds more than a sanitised prefix of the upstream's answer:\n%s", log)
	}
	if !strings.Contains(log, "HTTP/1.0 200 OK") {
		t.Errorf("the gateway's log lacks the sanitised prefix that helps the operator:\n%s", log)
	}
}

// TestDiscovery_DefaultNetworksRefuseMetadata: finding 1 with the target's
// networks absent (the default private ranges, which admit no loopback
// node): the gateway binary refuses every discovered node of a loopback
// cluster (reason loopback) but keeps the operator's seed, and when a user
// re-announces that seed through her tunnel at hostname 169.254.169.254
// port 80 (cluster-preferred-endpoint-type hostname), that node is
// refused as link_local, never published, and the seed still answers
// through the tunnel.
func TestDiscovery_DefaultNetworksRefuseMetadata(t *testing.T) {
	pw := randomSecret(t)
	cl := testenv.StartCluster(t, 3, 0, "--requirepass", pw)
	seed := cl.Nodes[0]
	k := newKey(t, "dev@laptop")
	g := startGatewayProc(t, gatewayProcOpts{
		Targets: map[string]string{"prod": fmt.Sprintf(`{type: redis-cluster, nodes: [%q], refresh: 1s, auth: {password_file: %q}}`,
			seed.Addr, writeSecret(t, pw))},
		Authorized: []string{k.Line},
		Extra:      "metrics: \"127.0.0.1:0\"\n",
		NoSSH:      true,
	})
	c := mustConnect(t, g, "tls", "prod", k)
	for _, r := range cl.Nodes[1:] {
		waitFor(t, 20*time.Second, r.Addr+" refused as loopback", func() bool { return refusalLines(g, r.Addr, r.ClusterID(), "loopback") > 0 })
	}
	watch := watchTopology(t, c, func(addr string) bool {
		host, port, _ := net.SplitHostPort(addr)
		return host == "169.254.169.254" || port == "80" || (addr != seed.Addr)
	})
	tunnelDo(t, c, seed.Addr, "CONFIG", "SET", "cluster-announce-hostname", "169.254.169.254")
	tunnelDo(t, c, seed.Addr, "CONFIG", "SET", "cluster-announce-port", 80)
	tunnelDo(t, c, seed.Addr, "CONFIG", "SET", "cluster-preferred-endpoint-type", "hostname")
	waitFor(t, 20*time.Second, "the gateway to refuse 169.254.169.254:80", func() bool {
		return refusalLines(g, "169.254.169.254:80", seed.ClusterID(), "link_local") > 0
	})
	if n := scrapeCounter(t, g, "cachetun_discovery_rejected_nodes_total", "target", "prod", "reason", "link_local"); n < 1 {
		t.Errorf("cachetun_discovery_rejected_nodes_total{reason=\"link_local\"} = %v, want >= 1", n)
	}
	// Every node the seed announces is refused now, so the rounds fail
	// and keep the last topology: two more of them, then the seed still
	// answers.
	failed := scrapeCounter(t, g, "cachetun_discovery_rounds_total", "target", "prod", "result", "error")
	waitFor(t, 30*time.Second, "2 more failed discovery rounds", func() bool {
		return scrapeCounter(t, g, "cachetun_discovery_rounds_total", "target", "prod", "result", "error") >= failed+2
	})
	if got := redisCLI(t, c.Local(t, seed.Addr), "PING"); got != "PONG" {
		t.Fatalf("PING the seed through the tunnel after the re-announcement: %q", got)
	}
	adminDo(t, seed, "CONFIG", "SET", "cluster-preferred-endpoint-type", "ip")
	adminDo(t, seed, "CONFIG", "SET", "cluster-announce-port", 0)
	watch.check(t)
}
