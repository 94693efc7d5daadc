package server

import (
	"bufio"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/cachetun/cachetun/tunnel"
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
	want := []tunnel.NodeInfo{
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
	want := []tunnel.NodeInfo{
		{Addr: "10.0.0.1:6379", ID: "m0", Role: "master", Slots: "0-5460,10923-16383"},
		{Addr: "10.0.0.2:6379", ID: "m1", Role: "master", Slots: "5461-10922"},
		{Addr: "10.0.0.4:6379", ID: "r0", Role: "replica"},
	}
	if got := nodesFromSlots(slots); !slices.Equal(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestSortNodes_NumericPorts(t *testing.T) {
	got := sortNodes([]tunnel.NodeInfo{{Addr: "10.0.0.1:10000"}, {Addr: "10.0.0.1:9999"}, {Addr: "10.0.0.1:9999"}, {Addr: "10.0.0.0:7000"}})
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
	nodes := []tunnel.NodeInfo{{Addr: "10.0.0.1:6379", Role: "master"}, {Addr: "10.0.0.2:6379", Role: "replica"}}
	if !tg.updateNodes(nodes) {
		t.Fatal("first update: no change reported")
	}
	select {
	case <-ch:
	default:
		t.Fatal("subscribers not woken")
	}
	v := tg.Info().Version
	if tg.updateNodes(slices.Clone(nodes)) || tg.Info().Version != v {
		t.Fatal("the same nodes again counted as a change")
	}
	if !tg.HasNode("10.0.0.2:6379") || !tg.HasNode("10.0.0.1:6379") || tg.HasNode("10.0.0.3:6379") {
		t.Fatal("HasNode does not follow the discovered nodes")
	}
	tg.updateNodes(nodes[1:])
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
	want := []tunnel.NodeInfo{
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
	got := tg.withEndpoints([]tunnel.NodeInfo{{Addr: "10.0.0.2:11211", Role: RoleNode}, {Addr: "cfg.example:11211", Role: RoleNode}})
	want := []tunnel.NodeInfo{{Addr: "cfg.example:11211", Role: RoleConfig}, {Addr: "10.0.0.2:11211", Role: RoleNode}}
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
