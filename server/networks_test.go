package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachetun/cachetun/control"
)

// TestNetPolicy_Check: where a discovered node may live, IPv4 and IPv6, in
// every spelling of the addresses that must never be admitted.
func TestNetPolicy_Check(t *testing.T) {
	self := []netip.Addr{netip.MustParseAddr("10.0.1.5"), netip.MustParseAddr("fd12:3456::5"), netip.MustParseAddr("127.0.0.1")}
	for _, tc := range []struct {
		networks []string
		ip       string
		want     string // reject reason, "" for admitted
	}{
		// The default: the private ranges.
		{nil, "10.1.2.3", ""},
		{nil, "172.16.0.1", ""},
		{nil, "172.31.255.254", ""},
		{nil, "172.32.0.1", rejectNetwork},
		{nil, "192.168.1.1", ""},
		{nil, "100.64.0.1", ""},
		{nil, "8.8.8.8", rejectNetwork},
		{nil, "fd12:abcd::1", ""},
		{nil, "2001:db8::1", rejectNetwork},
		{nil, "::ffff:10.0.0.1", ""},
		// Never, whatever networks say: metadata services and friends.
		{nil, "169.254.169.254", rejectLinkLocal},
		{nil, "169.254.170.2", rejectLinkLocal},
		{nil, "::ffff:169.254.169.254", rejectLinkLocal},
		{nil, "::ffff:a9fe:a9fe", rejectLinkLocal},
		{nil, "64:ff9b::169.254.169.254", rejectLinkLocal},
		{nil, "::169.254.169.254", rejectLinkLocal},
		{nil, "fd00:ec2::254", rejectMetadata},
		{nil, "fd00:ec2::253", rejectMetadata},
		{nil, "100.100.100.200", rejectMetadata},
		{nil, "fe80::1", rejectLinkLocal},
		{nil, "224.0.0.1", rejectMulticast},
		{nil, "ff02::1", rejectMulticast},
		{nil, "ff05::2", rejectMulticast},
		{nil, "255.255.255.255", rejectBroadcast},
		{nil, "0.0.0.0", rejectUnspecified},
		{nil, "0.1.2.3", rejectUnspecified},
		{nil, "::", rejectUnspecified},
		{nil, "::ffff:0.0.0.0", rejectUnspecified},
		// Loopback and the gateway itself: not by default.
		{nil, "127.0.0.1", rejectLoopback},
		{nil, "127.0.0.2", rejectLoopback},
		{nil, "::1", rejectLoopback},
		{nil, "::ffff:127.0.0.1", rejectLoopback},
		{nil, "64:ff9b::7f00:1", rejectLoopback},
		{nil, "10.0.1.5", rejectSelf},
		{nil, "fd12:3456::5", rejectSelf},
		// Explicit networks.
		{[]string{"127.0.0.1/32"}, "127.0.0.1", ""},
		{[]string{"127.0.0.1/32"}, "::ffff:127.0.0.1", ""},
		{[]string{"127.0.0.1/32"}, "127.0.0.2", rejectLoopback},
		{[]string{"127.0.0.1/32"}, "10.0.0.1", rejectNetwork},
		{[]string{"127.0.0.0/8"}, "127.0.0.2", ""},
		{[]string{"::1/128"}, "::1", ""},
		{[]string{"0.0.0.0/0", "::/0"}, "8.8.8.8", ""},
		{[]string{"0.0.0.0/0", "::/0"}, "127.0.0.1", rejectLoopback}, // too broad to name loopback
		{[]string{"0.0.0.0/0", "::/0"}, "169.254.169.254", rejectLinkLocal},
		{[]string{"0.0.0.0/0", "::/0"}, "fd00:ec2::254", rejectMetadata},
		{[]string{"0.0.0.0/0", "::/0"}, "10.0.1.5", rejectSelf},
		{[]string{"fd00:ec2::/32"}, "fd00:ec2::254", rejectMetadata},
		{[]string{"fd00:ec2::/32"}, "fd00:ec2::10", ""},
		{[]string{"10.0.0.0/8"}, "10.0.1.5", rejectSelf},
		{[]string{"10.0.0.0/8", "10.0.1.5/32"}, "10.0.1.5", ""},
		{[]string{"10.0.0.0/16"}, "192.168.0.1", rejectNetwork},
		{[]string{"10.0.0.0/16"}, "10.1.0.1", rejectNetwork},
	} {
		p, err := parseNetworks(tc.networks)
		if err != nil {
			t.Fatalf("parseNetworks(%q): %v", tc.networks, err)
		}
		err = p.check(netip.MustParseAddr(tc.ip), self)
		got := ""
		var re *NodeRefusedError
		if errors.As(err, &re) {
			got = re.Reason
			if !errors.Is(err, ErrNodeRefused) {
				t.Errorf("%s: %v is not ErrNodeRefused", tc.ip, err)
			}
		} else if err != nil {
			t.Fatalf("%s: untyped error %v", tc.ip, err)
		}
		if got != tc.want {
			t.Errorf("networks %q, %s: got %q (%v), want %q", tc.networks, tc.ip, got, err, tc.want)
		}
	}
}

// TestParseNetwork: networks that are typos or could never admit a node
// fail the load with a sentence that says what to write.
func TestParseNetwork(t *testing.T) {
	for _, ok := range []string{"10.0.0.0/16", "0.0.0.0/0", "::/0", "127.0.0.1/32", "fd00::/8", "100.64.0.0/10"} {
		if _, err := parseNetwork(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for in, want := range map[string]string{
		"10.0.0.1":            `write "10.0.0.1/32"`,
		"fd00::1":             `write "fd00::1/128"`,
		"10.0.0.1/8":          `did you mean "10.0.0.0/8"`,
		"169.254.0.0/16":      "link-local",
		"169.254.169.254/32":  "link-local",
		"fe80::/10":           "link-local",
		"224.0.0.0/4":         "multicast",
		"::ffff:10.0.0.0/104": "IPv4-mapped",
		"ten/8":               "CIDR",
		"":                    "CIDR",
	} {
		_, err := parseNetwork(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error with %q", in, err, want)
		}
	}
}

// TestConfig_Networks: the option is validated and its errors name the
// field.
func TestConfig_Networks(t *testing.T) {
	base := "host_key: k\nauthorized_keys: a\ntargets:\n  c:\n"
	for yaml, want := range map[string]string{
		"    type: redis-cluster\n    nodes: [\"10.0.0.1:6379\"]\n    networks: [\"10.0.0.0/16\", \"10.1.0.1\"]\n": `targets.c.networks[1]: "10.1.0.1" is an address`,
		"    type: redis\n    nodes: [\"10.0.0.1:6379\"]\n    networks: [\"10.0.0.0/16\"]\n":                       "targets.c.networks: only targets that discover",
		"    type: memcached\n    nodes: [\"10.0.0.1:11211\"]\n    networks: [\"10.0.0.0/16\"]\n":                  "targets.c.networks: only targets that discover",
	} {
		_, err := ParseConfig([]byte(base + yaml))
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", yaml, err, want)
		}
	}
	for _, yaml := range []string{
		"    type: redis-cluster\n    nodes: [\"10.0.0.1:6379\"]\n    networks: [\"10.0.0.0/16\", \"fd00::/8\"]\n",
		"    type: memcached\n    discovery: elasticache\n    nodes: [\"cfg.example:11211\"]\n    networks: [\"10.0.0.0/16\"]\n",
	} {
		cfg, err := ParseConfig([]byte(base + yaml))
		if err != nil {
			t.Errorf("%s: %v", yaml, err)
			continue
		}
		if len(cfg.Targets["c"].Networks) == 0 {
			t.Errorf("%s: networks lost", yaml)
		}
	}
}

// fakeResolver answers host names from a map and counts the questions.
type fakeResolver struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	asked   map[string]int
}

func (r *fakeResolver) set(host string, ips ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.answers == nil {
		r.answers, r.asked = map[string][]netip.Addr{}, map[string]int{}
	}
	r.answers[host] = nil
	for _, ip := range ips {
		r.answers[host] = append(r.answers[host], netip.MustParseAddr(ip))
	}
}

func (r *fakeResolver) lookup(_ context.Context, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked[host]++
	a, ok := r.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return a, nil
}

// countingListener accepts on addr and counts connections and bytes.
type countingListener struct {
	Addr  string
	conns atomic.Int64
	mu    sync.Mutex
	got   bytes.Buffer
}

func listenCounting(t *testing.T, host string, reply func(c net.Conn, br *bufio.Reader)) *countingListener {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Skipf("cannot listen on %s: %v", host, err)
	}
	l := &countingListener{Addr: ln.Addr().String()}
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
			l.conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if reply != nil {
					reply(c, bufio.NewReader(io.TeeReader(c, writerTo(&l.mu, &l.got))))
					return
				}
				_, _ = io.Copy(writerTo(&l.mu, &l.got), c)
			}()
		}
	}()
	return l
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func writerTo(mu *sync.Mutex, b *bytes.Buffer) io.Writer { return lockedWriter{mu, b} }

func (l *countingListener) received() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.got.String()
}

// fakeClusterNode answers every RESP command: AUTH with +OK, CLUSTER MYID
// with myid (raw RESP), anything else with an error.
func fakeClusterNode(myid string) func(c net.Conn, br *bufio.Reader) {
	return func(c net.Conn, br *bufio.Reader) {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
			var args []string
			for range n {
				_, _ = br.ReadString('\n')
				a, _ := br.ReadString('\n')
				args = append(args, strings.ToUpper(strings.TrimSpace(a)))
			}
			out := "-ERR unknown command\r\n"
			switch {
			case len(args) > 0 && args[0] == "AUTH":
				out = "+OK\r\n"
			case strings.Join(args, " ") == "CLUSTER MYID":
				out = myid
			}
			if _, err := io.WriteString(c, out); err != nil {
				return
			}
		}
	}
}

func bulk(s string) string { return "$" + strconv.Itoa(len(s)) + "\r\n" + s + "\r\n" }

const (
	idA = "1111111111111111111111111111111111111111"
	idB = "2222222222222222222222222222222222222222"
)

func testTarget(typ string, networks ...string) *target {
	cfg := &Target{Type: typ, Nodes: []string{"127.0.0.1:1"}, Networks: networks}
	if typ == TypeMemcached {
		cfg.Discovery = DiscoveryElastiCache
	}
	return newTarget("c", cfg)
}

// TestTarget_VetNode_ClusterID: a node is admitted only when the server at
// its checked address answers CLUSTER MYID with the id it was announced
// under; AUTH (the password) reaches only addresses inside the networks.
func TestTarget_VetNode_ClusterID(t *testing.T) {
	good := listenCounting(t, "127.0.0.1", fakeClusterNode(bulk(idA)))
	other := listenCounting(t, "127.0.0.1", fakeClusterNode(bulk(idB)))
	standalone := listenCounting(t, "127.0.0.1", fakeClusterNode("-ERR This instance has cluster support disabled\r\n"))
	junk := listenCounting(t, "127.0.0.1", fakeClusterNode("HTTP/1.0 200 OK\r\nServer: \x1b[31mEC2ws\r\n"))
	outside := listenCounting(t, "127.0.0.2", fakeClusterNode(bulk(idA)))
	tg := testTarget(TypeRedisCluster, "127.0.0.1/32")
	tg.cfg.Auth = &UpstreamAuth{PasswordFile: "unused"}
	tg.password = []byte("s3cret-cluster-password")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name, addr, id, want string
	}{
		{"the announced node", good.Addr, idA, ""},
		{"another cluster node at the address", other.Addr, idA, rejectIDMismatch},
		{"a standalone redis-server", standalone.Addr, idA, rejectIDMismatch},
		{"not redis at all", junk.Addr, idA, rejectIDMismatch},
		{"outside the networks", outside.Addr, idA, rejectLoopback},
		{"no id (CLUSTER SLOTS of Redis < 4)", good.Addr, "", rejectNoID},
		{"metadata service", "169.254.169.254:80", idA, rejectLinkLocal},
	} {
		r := tg.vetNode(ctx, control.NodeInfo{Addr: tc.addr, ID: tc.id}, nil)
		got := ""
		if r.err != nil {
			got = r.err.(*NodeRefusedError).Reason
		}
		if got != tc.want {
			t.Errorf("%s: got %q (%v), want %q", tc.name, got, r.err, tc.want)
		}
		if r.err != nil && strings.ContainsAny(r.err.Error(), "\x1b\r\n") {
			t.Errorf("%s: the refusal carries raw bytes of the node: %q", tc.name, r.err.Error())
		}
		if r.err != nil && strings.Contains(r.err.Error(), "Server:") {
			t.Errorf("%s: the refusal quotes more than the first line of the node: %q", tc.name, r.err.Error())
		}
	}
	if n := outside.conns.Load(); n != 0 {
		t.Fatalf("the listener outside the networks got %d connections, want 0", n)
	}
	if got := good.received(); !strings.Contains(got, "s3cret-cluster-password") || !strings.Contains(got, "MYID") {
		t.Fatalf("the verified node did not get AUTH then CLUSTER MYID: %q", got)
	}
	// A verified node is not verified again while nothing changes ...
	before := good.conns.Load()
	for range 3 {
		if r := tg.vetNode(ctx, control.NodeInfo{Addr: good.Addr, ID: idA}, nil); r.err != nil || r.dial != good.Addr {
			t.Fatalf("again: %+v", r)
		}
	}
	if n := good.conns.Load() - before; n != 0 {
		t.Fatalf("a steady node was verified %d more times, want 0", n)
	}
	// ... but a changed id is.
	if r := tg.vetNode(ctx, control.NodeInfo{Addr: good.Addr, ID: idB}, nil); r.err == nil {
		t.Fatal("a changed id was admitted without a check")
	}
	if n := good.conns.Load() - before; n != 1 {
		t.Fatalf("a changed id made %d verifications, want 1", n)
	}
}

// TestTarget_VetNode_Hostname: a host name is resolved once, every IP is
// checked, and the checked IP is what the gateway dials afterwards, even
// when the name then resolves elsewhere (DNS rebinding).
func TestTarget_VetNode_Hostname(t *testing.T) {
	node := listenCounting(t, "127.0.0.1", nil)
	rebound := listenCounting(t, "127.0.0.2", nil)
	_, port, _ := net.SplitHostPort(node.Addr)
	res := &fakeResolver{}
	res.set("node-1.cache.internal", "127.0.0.1")
	res.set("metadata.attacker.example", "169.254.169.254")
	res.set("split.attacker.example", "127.0.0.1", "169.254.169.254")
	res.set("v6meta.attacker.example", "fd00:ec2::254")
	tg := testTarget(TypeMemcached, "127.0.0.1/32")
	tg.lookup = res.lookup
	ctx := context.Background()
	for host, want := range map[string]string{
		"node-1.cache.internal":     "",
		"metadata.attacker.example": rejectLinkLocal,
		"split.attacker.example":    rejectLinkLocal,
		"v6meta.attacker.example":   rejectMetadata,
		"nxdomain.example":          rejectResolve,
		"bad host!":                 rejectBadAddr,
	} {
		r := tg.vetNode(ctx, control.NodeInfo{Addr: net.JoinHostPort(host, port)}, nil)
		got := ""
		if r.err != nil {
			got = r.err.(*NodeRefusedError).Reason
		}
		if got != want {
			t.Errorf("%s: got %q (%v), want %q", host, got, r.err, want)
		}
	}
	addr := net.JoinHostPort("node-1.cache.internal", port)
	r := tg.vetNode(ctx, control.NodeInfo{Addr: addr}, nil)
	if r.dial != node.Addr {
		t.Fatalf("dial address %q, want the checked IP %q", r.dial, node.Addr)
	}
	tg.updateNodes([]control.NodeInfo{{Addr: addr}}, map[string]string{addr: r.dial})
	asked := res.asked["node-1.cache.internal"]
	// The name now points at another address, where a listener waits:
	// the gateway must not follow it.
	res.set("node-1.cache.internal", "127.0.0.2")
	c, err := tg.dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if res.asked["node-1.cache.internal"] != asked {
		t.Fatal("dial resolved the name again")
	}
	waitForCond(t, func() bool { return node.conns.Load() == 1 })
	if n := rebound.conns.Load(); n != 0 {
		t.Fatalf("the rebound address got %d connections", n)
	}
	// An address that was never verified is never dialled.
	if _, err := tg.dial(ctx, rebound.Addr); !errors.Is(err, ErrNodeRefused) {
		t.Fatalf("dial of an unverified address: %v, want ErrNodeRefused", err)
	}
}

func waitForCond(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServer_VetNodes_LogOnce: a refused node is logged and counted once
// per change, not every round; a node that passes again is said so.
func TestServer_VetNodes_LogOnce(t *testing.T) {
	var logBuf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerTo(&mu, &logBuf), nil))
	s := &Server{log: log, metrics: newMetrics(false, "test")}
	cfg := DefaultConfig()
	cfg.Limits.DialTimeout = 2 * time.Second
	s.conf.Store(cfg)
	tg := testTarget(TypeMemcached, "127.0.0.1/32")
	good := control.NodeInfo{Addr: "127.0.0.1:11211", ID: "a", Role: RoleNode}
	bad := control.NodeInfo{Addr: "169.254.169.254:80", ID: "x", Role: RoleNode}
	ctx := context.Background()
	for range 5 {
		nodes, dials := s.vetNodes(ctx, tg, []control.NodeInfo{good, bad}, log)
		if len(nodes) != 1 || nodes[0] != good || dials[good.Addr] != "127.0.0.1:11211" {
			t.Fatalf("admitted %+v %v", nodes, dials)
		}
	}
	count := func() (int, float64) {
		mu.Lock()
		defer mu.Unlock()
		return strings.Count(logBuf.String(), "discovered node refused"), rejectedCount(t, s, "c", rejectLinkLocal)
	}
	if lines, n := count(); lines != 1 || n != 1 {
		t.Fatalf("5 rounds: %d log lines, metric %v; want 1 and 1", lines, n)
	}
	moved := control.NodeInfo{Addr: "127.0.0.3:80", ID: "x", Role: RoleNode}
	s.vetNodes(ctx, tg, []control.NodeInfo{good, moved}, log)
	if lines, _ := count(); lines != 2 {
		t.Fatalf("a moved node: %d log lines, want 2", lines)
	}
	if n := rejectedCount(t, s, "c", rejectLoopback); n != 1 {
		t.Fatalf("loopback refusals counted %v, want 1", n)
	}
	mu.Lock()
	logged := logBuf.String()
	mu.Unlock()
	if !strings.Contains(logged, "reason=link_local") || !strings.Contains(logged, "node=169.254.169.254:80") {
		t.Fatalf("the log line lacks the node or the reason:\n%s", logged)
	}
}

// rejectedCount reads cachetun_discovery_rejected_nodes_total{target,reason}
// from the server's registry, as a scrape would.
func rejectedCount(t *testing.T, s *Server, target, reason string) float64 {
	t.Helper()
	mfs, err := s.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "cachetun_discovery_rejected_nodes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["target"] == target && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestRedisAuth_NoEcho: whatever an upstream answers to AUTH, the error
// quotes at most a sanitised prefix, and the client's sentence none of it.
func TestRedisAuth_NoEcho(t *testing.T) {
	for name, answer := range map[string]string{
		"http":   "HTTP/1.0 200 OK\r\nServer: EC2ws\r\n\r\nami-id\ninstance-id\n",
		"escape": "-ERR \x1b[2J\x1b[31mpwned " + strings.Repeat("A", 300) + "\r\n",
		"binary": "\x00\xff\xfe\x01secret-token-from-upstream\r\n",
		"noline": strings.Repeat("Z", 600),
	} {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			buf := make([]byte, 256)
			_, _ = b.Read(buf)
			_, _ = io.WriteString(b, answer)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := redisAuth(ctx, a, "", []byte("pw"))
		cancel()
		a.Close()
		if !errors.Is(err, ErrUpstreamAuth) {
			t.Errorf("%s: %v, want ErrUpstreamAuth", name, err)
			continue
		}
		msg := err.Error()
		if strings.ContainsAny(msg, "\x1b\x00\r\n") || strings.Contains(msg, "ami-id") || strings.Contains(msg, strings.Repeat("A", 65)) {
			t.Errorf("%s: the log text holds raw or long upstream bytes: %q", name, msg)
		}
		client := upstreamFailure("10.0.0.1:6379", err)
		for _, leak := range []string{"HTTP", "EC2ws", "pwned", "secret-token", "ZZZ", "ERR"} {
			if strings.Contains(client, leak) {
				t.Errorf("%s: the client's message %q holds %q from the upstream", name, client, leak)
			}
		}
	}
}

// FuzzReadMyID: whatever a node answers to CLUSTER MYID, the reader
// neither panics nor returns more than maxNodeIDLen bytes.
func FuzzReadMyID(f *testing.F) {
	for _, s := range []string{
		bulk(idA),
		"+" + idA + "\r\n",
		"-ERR This instance has cluster support disabled\r\n",
		"-NOAUTH Authentication required.\r\n",
		"HTTP/1.0 200 OK\r\n",
		"$-1\r\n",
		"$0\r\n\r\n",
		"$99999999999\r\n",
		"$40\r\n" + idA[:20],
		"$40\r\n" + idA + "XX",
		"*1\r\n" + bulk(idA),
		"",
		"\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, reply string) {
		id, err := readMyID(bufio.NewReader(strings.NewReader(reply)))
		if err == nil && len(id) > maxNodeIDLen {
			t.Fatalf("id of %d bytes", len(id))
		}
		if err != nil && strings.ContainsAny(err.Error(), "\r\n\x00") {
			t.Fatalf("error holds raw bytes: %q", err.Error())
		}
	})
}

// TestNetPolicy_RefusalText: the refusal reads as a sentence ("an
// unspecified address", "a link-local address").
func TestNetPolicy_RefusalText(t *testing.T) {
	p, err := parseNetworks(nil)
	if err != nil {
		t.Fatal(err)
	}
	for ip, want := range map[string]string{
		"0.0.0.0":         "0.0.0.0 is an unspecified address, never admitted as a cache node",
		"169.254.169.254": "169.254.169.254 is a link-local address, never admitted as a cache node",
		"fd00:ec2::254":   "fd00:ec2::254 is a metadata address, never admitted as a cache node",
	} {
		if err := p.check(netip.MustParseAddr(ip), nil); err == nil || err.Error() != want {
			t.Errorf("check(%s) = %v, want %q", ip, err, want)
		}
	}
}
