package server

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/cachetun/cachetun/control"
)

func TestFormatSlots(t *testing.T) {
	for _, tc := range []struct {
		in   [][2]int
		want string
	}{
		{nil, ""},
		{[][2]int{{0, 5460}}, "0-5460"},
		{[][2]int{{10923, 10923}}, "10923"},
		{[][2]int{{6001, 10922}, {0, 5460}, {6000, 6000}}, "0-5460,6000-10922"},
		{[][2]int{{0, 10}, {5, 20}, {22, 22}}, "0-20,22"},
	} {
		if got := formatSlots(tc.in); got != tc.want {
			t.Errorf("formatSlots(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestTarget_NodesFromShards(t *testing.T) {
	shards := []redis.ClusterShard{{
		Slots: []redis.SlotRange{{Start: 5461, End: 10922}, {Start: 0, End: 0}},
		Nodes: []redis.Node{
			{ID: "m1", Endpoint: "10.0.1.231", IP: "10.0.1.231", Port: 6379, TLSPort: 6380, Role: "master", Health: "online"},
			{ID: "r1", Endpoint: "?", IP: "10.0.1.232", Port: 6379, Role: "replica", Health: "online"},
			{ID: "noaddr", Endpoint: "?", Port: 6379, Role: "replica"},
		},
	}, {
		Slots: []redis.SlotRange{{Start: 1, End: 5460}},
		Nodes: []redis.Node{
			{ID: "m0", Endpoint: "node-0.example", IP: "10.0.1.230", Port: 6379, Role: "master"},
		},
	}}
	plain := &target{cfg: &Target{}}
	want := []control.NodeInfo{
		{Addr: "10.0.1.231:6379", ID: "m1", Role: "master", Slots: "0,5461-10922"},
		{Addr: "10.0.1.232:6379", ID: "r1", Role: "replica"},
		{Addr: "node-0.example:6379", ID: "m0", Role: "master", Slots: "1-5460"},
	}
	if got := plain.nodesFromShards(shards); !slices.Equal(got, want) {
		t.Errorf("plain: got %+v, want %+v", got, want)
	}
	// With upstream TLS the TLS port is the one to dial and to announce.
	withTLS := &target{cfg: &Target{}, upstreamTLS: nil}
	withTLS.upstreamTLS, _ = upstreamTLSConfig(&UpstreamTLS{})
	if got := withTLS.nodesFromShards(shards); got[0].Addr != "10.0.1.231:6380" || got[1].Addr != "10.0.1.232:6379" {
		t.Errorf("tls: got %+v", got)
	}
}

func TestNodesFromSlots(t *testing.T) {
	slots := []redis.ClusterSlot{
		{Start: 0, End: 5460, Nodes: []redis.ClusterNode{{ID: "m0", Addr: "10.0.0.1:6379"}, {ID: "r0", Addr: "10.0.0.4:6379"}}},
		{Start: 5461, End: 10922, Nodes: []redis.ClusterNode{{ID: "m1", Addr: ":6379", NetworkingMetadata: map[string]string{"ip": "10.0.0.2"}}}},
		{Start: 10923, End: 16383, Nodes: []redis.ClusterNode{{ID: "m0", Addr: "10.0.0.1:6379"}}},
	}
	want := []control.NodeInfo{
		{Addr: "10.0.0.1:6379", ID: "m0", Role: "master", Slots: "0-5460,10923-16383"},
		{Addr: "10.0.0.2:6379", ID: "m1", Role: "master", Slots: "5461-10922"},
		{Addr: "10.0.0.4:6379", ID: "r0", Role: "replica"},
	}
	if got := nodesFromSlots(slots); !slices.Equal(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestSortNodes_NumericPorts(t *testing.T) {
	got := sortNodes([]control.NodeInfo{{Addr: "10.0.0.1:10000"}, {Addr: "10.0.0.1:9999"}, {Addr: "10.0.0.1:9999"}, {Addr: "10.0.0.0:7000"}})
	var addrs []string
	for _, n := range got {
		addrs = append(addrs, n.Addr)
	}
	if want := []string{"10.0.0.0:7000", "10.0.0.1:9999", "10.0.0.1:10000"}; !slices.Equal(addrs, want) {
		t.Errorf("got %v, want %v", addrs, want)
	}
}

func TestTarget_UpdateNodes(t *testing.T) {
	tg := newTarget("c", &Target{Type: TypeRedisCluster, Nodes: []string{"10.0.0.1:6379"}})
	ch := tg.Changed()
	nodes := []control.NodeInfo{{Addr: "10.0.0.1:6379", Role: "master"}, {Addr: "10.0.0.2:6379", Role: "replica"}}
	if !tg.updateNodes(nodes, nil) {
		t.Fatal("first update: no change reported")
	}
	select {
	case <-ch:
	default:
		t.Fatal("subscribers not woken")
	}
	v := tg.Info().Version
	if tg.updateNodes(slices.Clone(nodes), nil) || tg.Info().Version != v {
		t.Fatal("the same nodes again counted as a change")
	}
	if !tg.HasNode("10.0.0.2:6379") || !tg.HasNode("10.0.0.1:6379") || tg.HasNode("10.0.0.3:6379") {
		t.Fatal("HasNode does not follow the discovered nodes")
	}
	tg.updateNodes(nodes[1:], nil)
	if !tg.HasNode("10.0.0.1:6379") {
		t.Fatal("a seed is no longer a node")
	}
	if got := tg.knownAddrs(); !slices.Equal(got, []string{"10.0.0.1:6379", "10.0.0.2:6379"}) {
		t.Fatalf("knownAddrs: %v", got)
	}
}

// configReply is an ElastiCache reply to config get cluster.
func configReply(body string) string {
	return "CONFIG cluster 0 " + itoa(len(body)) + "\r\n" + body + "\r\nEND\r\n"
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func TestReadConfigReply(t *testing.T) {
	body := "12\nmycluster.0001.use1.cache.amazonaws.com|10.82.235.120|11211 mycluster.0002.use1.cache.amazonaws.com|10.80.249.27|11211\n"
	got, err := readConfigReply(bufio.NewReader(strings.NewReader(configReply(body))))
	if err != nil || string(got) != body {
		t.Fatalf("got %q, %v", got, err)
	}
	version, nodes, err := parseClusterConfig(got)
	if err != nil {
		t.Fatal(err)
	}
	want := []control.NodeInfo{
		{Addr: "10.80.249.27:11211", ID: "mycluster.0002.use1.cache.amazonaws.com", Role: RoleNode},
		{Addr: "10.82.235.120:11211", ID: "mycluster.0001.use1.cache.amazonaws.com", Role: RoleNode},
	}
	if version != 12 || !slices.Equal(nodes, want) {
		t.Fatalf("got %d %+v", version, nodes)
	}
	for name, reply := range map[string]string{
		"plain memcached":  "ERROR\r\n",
		"no END":           "CONFIG cluster 0 3\r\n1\n\n\r\nVALUE\r\n",
		"huge length":      "CONFIG cluster 0 999999999\r\n",
		"negative length":  "CONFIG cluster 0 -1\r\n",
		"truncated body":   "CONFIG cluster 0 50\r\n1\nh|1.2.3.4|1",
		"other config key": "CONFIG other 0 1\r\nx\r\nEND\r\n",
	} {
		if _, err := readConfigReply(bufio.NewReader(strings.NewReader(reply))); err == nil {
			t.Errorf("%s: accepted %q", name, reply)
		}
	}
	for name, body := range map[string]string{
		"no node line":  "1",
		"bad version":   "x\nh|1.2.3.4|11211\n",
		"bad entry":     "1\nh|1.2.3.4\n",
		"bad port":      "1\nh|1.2.3.4|http\n",
		"port too big":  "1\nh|1.2.3.4|70000\n",
		"no host or ip": "1\n||11211\n",
	} {
		if _, _, err := parseClusterConfig([]byte(body)); err == nil {
			t.Errorf("%s: accepted %q", name, body)
		}
	}
	// A host name without an IP is dialled by name.
	if _, nodes, err := parseClusterConfig([]byte("3\nnode-a.internal||11211\n")); err != nil || nodes[0].Addr != "node-a.internal:11211" {
		t.Errorf("host only: %+v, %v", nodes, err)
	}
}

func TestTarget_WithEndpoints(t *testing.T) {
	tg := newTarget("m", &Target{Type: TypeMemcached, Discovery: DiscoveryElastiCache, Nodes: []string{"cfg.example:11211"}})
	if n := tg.Info().Nodes; len(n) != 1 || n[0].Role != RoleConfig {
		t.Fatalf("before discovery: %+v", n)
	}
	got := tg.withEndpoints([]control.NodeInfo{{Addr: "10.0.0.2:11211", Role: RoleNode}, {Addr: "cfg.example:11211", Role: RoleNode}})
	want := []control.NodeInfo{{Addr: "cfg.example:11211", Role: RoleConfig}, {Addr: "10.0.0.2:11211", Role: RoleNode}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// FuzzParseClusterConfig: whatever a configuration endpoint answers, the
// parser neither panics nor returns a node that is not host:port.
func FuzzParseClusterConfig(f *testing.F) {
	for _, s := range []string{
		configReply("12\nh1|10.0.0.1|11211 h2|10.0.0.2|11211\n"),
		configReply("1\n\n"),
		"ERROR\r\n",
		"CONFIG cluster 0 4\r\n1\nx\r\n\r\nEND\r\n",
		"CONFIG cluster 0 1048577\r\n",
		configReply("1\n|::1|11211 h||1\n"),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, reply string) {
		body, err := readConfigReply(bufio.NewReader(strings.NewReader(reply)))
		if err != nil {
			return
		}
		_, nodes, err := parseClusterConfig(body)
		if err != nil {
			return
		}
		for _, n := range nodes {
			if _, _, err := net.SplitHostPort(n.Addr); err != nil {
				t.Fatalf("node %q is not host:port", n.Addr)
			}
		}
	})
}

// TestServer_DiscoveryLifecycle: the loops start once (a second start adds
// none), end with stopDiscovery and leave no goroutine behind; a failing
// first round still releases the first Welcome; a reload's swap stops the
// loops of retired targets and starts those of new ones.
func TestServer_DiscoveryLifecycle(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), idleWorkers)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing answers there
	cfg := DefaultConfig()
	cfg.Limits.DialTimeout = time.Second
	s := &Server{log: slog.New(slog.DiscardHandler), metrics: newMetrics(false, "test")}
	s.conf.Store(cfg)
	targets := map[string]*target{}
	for name, tc := range map[string]*Target{
		"cluster":   {Type: TypeRedisCluster, Nodes: []string{addr}, Refresh: time.Hour},
		"memcached": {Type: TypeMemcached, Nodes: []string{addr}, Refresh: time.Hour, Discovery: DiscoveryElastiCache},
		"static":    {Type: TypeRedis, Nodes: []string{addr}},
	} {
		targets[name] = newTarget(name, tc)
	}
	s.tset.Store(newTargetSet(targets))
	ctx := context.Background()
	s.startDiscovery(ctx)
	s.disc.mu.Lock()
	run, nloops := s.disc.run, len(s.disc.run.loops)
	s.disc.mu.Unlock()
	s.startDiscovery(ctx) // discovery starts once: a second start adds nothing
	s.disc.mu.Lock()
	if s.disc.run != run || len(s.disc.run.loops) != nloops || nloops != 2 {
		t.Errorf("after a second start: run replaced %v, %d loops; want false, 2", s.disc.run != run, len(s.disc.run.loops))
	}
	s.disc.mu.Unlock()
	for _, name := range []string{"cluster", "memcached"} {
		tg := s.target(name)
		select {
		case <-tg.discovered:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the first round never ended", name)
		}
		for range 10 {
			tg.requestRefresh() // never blocks
		}
	}
	if s.target("static").discovers() {
		t.Fatal("a redis target discovers")
	}
	// A reload that replaces "cluster" and drops "memcached": the old
	// loops stop, one starts for the new target.
	oldCluster := s.target("cluster")
	newCluster := newTarget("cluster", &Target{Type: TypeRedisCluster, Nodes: []string{addr, "127.0.0.1:1"}, Refresh: time.Hour})
	s.tset.Store(newTargetSet(map[string]*target{"cluster": newCluster, "static": targets["static"]}))
	s.syncDiscovery()
	s.disc.mu.Lock()
	_, oldRuns := s.disc.run.loops[oldCluster]
	_, newRuns := s.disc.run.loops[newCluster]
	nloops = len(s.disc.run.loops)
	s.disc.mu.Unlock()
	if oldRuns || !newRuns || nloops != 1 {
		t.Fatalf("after the swap: old loop running %v, new loop running %v, %d loops; want false, true, 1", oldRuns, newRuns, nloops)
	}
	s.stopDiscovery() // waits for every loop; goleak checks that none is left
	if s.disc.run != nil {
		t.Fatal("discovery still running after stopDiscovery")
	}
	s.stopDiscovery() // idempotent
}

// fakeNode answers CLUSTER SHARDS with reply and any other command with
// an error, once per connection, and counts connections.
func fakeNode(t *testing.T, reply string) (string, *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int64
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
			conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					_ = c.SetDeadline(time.Now().Add(5 * time.Second))
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if !strings.HasPrefix(line, "*") {
						continue
					}
					var args []string
					n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
					for range n {
						_, _ = br.ReadString('\n') // $len
						a, _ := br.ReadString('\n')
						args = append(args, strings.ToUpper(strings.TrimSpace(a)))
					}
					out := "-ERR unknown command\r\n"
					if strings.Join(args, " ") == "CLUSTER SHARDS" {
						out = reply
					}
					if _, err := io.WriteString(c, out); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), &conns
}

// TestTarget_QueryRedisCluster: one query is one connection, parsed from
// a RESP2 CLUSTER SHARDS reply, and leaves no goroutine behind.
func TestTarget_QueryRedisCluster(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before, idleWorkers) }) // after fakeNode's cleanup
	bulk := func(s string) string { return "$" + strconv.Itoa(len(s)) + "\r\n" + s + "\r\n" }
	node := func(id, ip string, port int, role string) string {
		return "*14\r\n" + bulk("id") + bulk(id) + bulk("port") + ":" + strconv.Itoa(port) + "\r\n" +
			bulk("ip") + bulk(ip) + bulk("endpoint") + bulk(ip) + bulk("role") + bulk(role) +
			bulk("replication-offset") + ":0\r\n" + bulk("health") + bulk("online")
	}
	reply := "*2\r\n" +
		"*4\r\n" + bulk("slots") + "*2\r\n:0\r\n:8191\r\n" + bulk("nodes") + "*2\r\n" + node("a", "10.0.0.1", 6379, "master") + node("b", "10.0.0.2", 6379, "replica") +
		"*4\r\n" + bulk("slots") + "*2\r\n:8192\r\n:16383\r\n" + bulk("nodes") + "*1\r\n" + node("c", "10.0.0.3", 6379, "master")
	addr, conns := fakeNode(t, reply)
	tg := newTarget("c", &Target{Type: TypeRedisCluster, Nodes: []string{addr}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nodes, err := tg.queryRedisCluster(ctx, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := []control.NodeInfo{
		{Addr: "10.0.0.1:6379", ID: "a", Role: "master", Slots: "0-8191"},
		{Addr: "10.0.0.2:6379", ID: "b", Role: "replica"},
		{Addr: "10.0.0.3:6379", ID: "c", Role: "master", Slots: "8192-16383"},
	}
	if !slices.Equal(nodes, want) {
		t.Fatalf("got %+v, want %+v", nodes, want)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for one query, want 1", n)
	}
}
