package resp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// needRedis skips the test when redis-server is missing, unless CI is set.
func needRedis(t *testing.T, bins ...string) {
	t.Helper()
	for _, bin := range append([]string{"redis-server"}, bins...) {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is required in CI: %v", bin, err)
			}
			t.Skipf("%s not found; install redis to run this test", bin)
		}
	}
}

// freePort returns a port that was free a moment ago. redis-server cannot take
// a listener, so startRedis retries when the port is taken in between.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startRedis starts a cluster-enabled redis-server on 127.0.0.1 and returns its
// port and cluster bus port once it answers PING.
func startRedis(t *testing.T, extra ...string) (port, busPort int) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		port, busPort = freePort(t), freePort(t)
		dir := t.TempDir()
		args := append([]string{
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--cluster-port", strconv.Itoa(busPort),
			"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"),
			"--dir", dir, "--save", "", "--appendonly", "no", "--protected-mode", "no",
		}, extra...)
		cmd := exec.Command("redis-server", args...)
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() { _ = cmd.Process.Kill(); <-exited }
		err := waitFor(5*time.Second, exited, func() bool {
			c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
			if err != nil {
				return false
			}
			defer c.Close()
			return rawDo(c, "PING") == "+PONG\r\n"
		})
		if err == nil {
			t.Cleanup(stop)
			return port, busPort
		}
		stop()
		if attempt == 2 {
			t.Fatalf("redis-server on port %d: %v\n%s", port, err, log.String())
		}
	}
}

// waitFor polls cond until it holds, gone is closed, or the timeout passes.
func waitFor(timeout time.Duration, gone <-chan struct{}, cond func() bool) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for !cond() {
		select {
		case <-gone:
			return errors.New("process exited")
		case <-deadline:
			return errors.New("timed out")
		case <-tick.C:
		}
	}
	return nil
}

// rawDo sends one inline-free command on c and returns the raw reply.
func rawDo(c net.Conn, args ...string) string {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, cmd(args...)); err != nil {
		return ""
	}
	v, err := readValue(bufio.NewReader(c))
	if err != nil {
		return ""
	}
	return v
}

// readValue reads one complete RESP value.
func readValue(r *bufio.Reader) (string, error) {
	var buf []byte
	for {
		b, err := r.ReadSlice('\n')
		buf = append(buf, b...)
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
		v, n, err := decode(buf, 0)
		if err == nil {
			_ = v
			return string(buf[:n]), nil
		}
		if err != errIncomplete {
			return "", err
		}
	}
}

// testProxy is a local port in front of one redis node, rewriting replies.
type testProxy struct {
	ln       net.Listener
	upstream string
	accepted atomic.Int32
	redirs   redirectRec

	wg sync.WaitGroup
	mu sync.Mutex
	// mu guards the following.
	conns  []net.Conn
	closed bool
}

func (p *testProxy) addr() string { return p.ln.Addr().String() }

// startProxies puts a proxy in front of each upstream node. Each maps every
// node's address (as 127.0.0.1, as the empty host of its own node, and as
// hostnames[upstream]) to that node's proxy.
func startProxies(t *testing.T, upstreams []string, hostnames map[string]string) []*testProxy {
	t.Helper()
	proxies := make([]*testProxy, len(upstreams))
	table := map[string]string{}
	for i, up := range upstreams {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		proxies[i] = &testProxy{ln: ln, upstream: up}
		table[up] = ln.Addr().String()
		if h, ok := hostnames[up]; ok {
			_, port, _ := net.SplitHostPort(up)
			table[h+":"+port] = ln.Addr().String()
		}
	}
	for _, p := range proxies {
		p := p
		m := func(up string) (string, bool) {
			if strings.HasPrefix(up, ":") {
				up = "127.0.0.1" + up
				if up != p.upstream {
					return "", false
				}
			}
			l, ok := table[up]
			return l, ok
		}
		p.wg.Add(1)
		go p.serve(t, m)
		t.Cleanup(p.close)
	}
	return proxies
}

func (p *testProxy) serve(t *testing.T, m AddrMap) {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		u, err := net.Dial("tcp", p.upstream)
		if err != nil {
			t.Errorf("dial %s: %v", p.upstream, err)
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			u.Close()
			return
		}
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		rc := NewConn(Options{Map: m, OnRedirect: p.redirs.on})
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			_, _ = rc.CopyRequests(u, c)
			_ = u.(*net.TCPConn).CloseWrite()
		}()
		go func() {
			defer p.wg.Done()
			_, _ = rc.CopyReplies(c, u)
			_ = c.(*net.TCPConn).CloseWrite()
		}()
	}
}

// close stops the proxy and waits for its goroutines.
func (p *testProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func TestConn_RealRedis(t *testing.T) {
	needRedis(t)
	port, _ := startRedis(t, "--cluster-announce-hostname", "redis-a.internal")
	upstream := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	direct, err := net.Dial("tcp", upstream)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	if got := rawDo(direct, "CLUSTER", "ADDSLOTSRANGE", "0", "16383"); got != "+OK\r\n" {
		t.Fatalf("CLUSTER ADDSLOTSRANGE: %q", got)
	}
	if err := waitFor(10*time.Second, nil, func() bool {
		return strings.Contains(rawDo(direct, "CLUSTER", "INFO"), "cluster_state:ok")
	}); err != nil {
		t.Fatalf("cluster state not ok: %v", err)
	}
	proxies := startProxies(t, []string{upstream}, map[string]string{upstream: "redis-a.internal"})
	_, lport, _ := net.SplitHostPort(proxies[0].addr())

	c, err := net.Dial("tcp", proxies[0].addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, proto := range []string{"2", "3"} {
		t.Run("resp"+proto, func(t *testing.T) {
			if got := rawDo(c, "HELLO", proto); !strings.Contains(got, "proto") {
				t.Fatalf("HELLO %s: %q", proto, got)
			}
			rawDo(direct, "HELLO", proto)
			for _, sub := range []string{"SLOTS", "SHARDS", "NODES"} {
				before := rawDo(direct, "CLUSTER", sub)
				after := rawDo(c, "CLUSTER", sub)
				t.Logf("CLUSTER %s direct:  %q", sub, before)
				t.Logf("CLUSTER %s proxied: %q", sub, after)
				if !strings.Contains(before, strconv.Itoa(port)) || strings.Contains(after, strconv.Itoa(port)+"\r\n") ||
					strings.Contains(after, strconv.Itoa(port)+"@") || !strings.Contains(after, lport) {
					t.Errorf("CLUSTER %s: port %d not replaced by %s", sub, port, lport)
				}
				if strings.Contains(after, "redis-a.internal") {
					t.Errorf("CLUSTER %s: hostname not replaced", sub)
				}
				if _, n, err := decode([]byte(after), 0); err != nil || n != len(after) {
					t.Errorf("CLUSTER %s: rewritten reply is not one RESP value: %v", sub, err)
				}
			}
			// Inside a transaction too.
			rawDo(c, "MULTI")
			rawDo(c, "CLUSTER", "NODES")
			rawDo(c, "GET", "{a}k")
			if got := rawDo(c, "EXEC"); !strings.Contains(got, "127.0.0.1:"+lport+"@") {
				t.Errorf("EXEC reply not rewritten: %q", got)
			}
			// A value holding an address is left alone.
			rawDo(c, "SET", "{a}k", "-MOVED 1 "+upstream)
			if got, want := rawDo(c, "GET", "{a}k"), bulk("-MOVED 1 "+upstream); got != want {
				t.Errorf("GET = %q, want %q", got, want)
			}
		})
	}

	// go-redis's ClusterClient learns the proxy's address from CLUSTER SLOTS.
	ctx := context.Background()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{proxies[0].addr()}})
	defer cc.Close()
	if err := cc.Set(ctx, "foo", "bar", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := cc.Get(ctx, "foo").Result(); err != nil || got != "bar" {
		t.Fatalf("GET foo = %q, %v", got, err)
	}
	var seen []string
	if err := cc.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error {
		seen = append(seen, c.Options().Addr)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen[0] != proxies[0].addr() {
		t.Errorf("go-redis uses nodes %q, want only %s", seen, proxies[0].addr())
	}
}

// A three-master cluster: redirects through the proxies lead to proxies, for
// go-redis, redis-cli -c and redis-benchmark --cluster.
func TestConn_RealRedisCluster(t *testing.T) {
	needRedis(t)
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	var ports, busPorts []int
	var upstreams []string
	for range 3 {
		p, bp := startRedis(t)
		ports, busPorts = append(ports, p), append(busPorts, bp)
		upstreams = append(upstreams, net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	}
	// Meet, split the slots, and wait until every node agrees.
	first, err := net.Dial("tcp", upstreams[0])
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	ranges := [][2]int{{0, 5460}, {5461, 10922}, {10923, 16383}}
	for i, up := range upstreams {
		c, err := net.Dial("tcp", up)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := rawDo(c, "CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(ranges[i][0]), strconv.Itoa(ranges[i][1])); got != "+OK\r\n" {
			t.Fatalf("ADDSLOTSRANGE on %s: %q", up, got)
		}
		if i > 0 {
			if got := rawDo(first, "CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(ports[i]), strconv.Itoa(busPorts[i])); got != "+OK\r\n" {
				t.Fatalf("CLUSTER MEET: %q", got)
			}
		}
	}
	err = waitFor(20*time.Second, nil, func() bool {
		for _, up := range upstreams {
			c, err := net.Dial("tcp", up)
			if err != nil {
				return false
			}
			info := rawDo(c, "CLUSTER", "INFO")
			c.Close()
			if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:3") {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatalf("cluster did not converge: %v", err)
	}
	proxies := startProxies(t, upstreams, nil)

	// Raw: a key of another node's slot is redirected to that node's proxy.
	c, err := net.Dial("tcp", proxies[0].addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// "foo" hashes to slot 12182, served by the third node.
	if got, want := rawDo(c, "GET", "foo"), "-MOVED 12182 "+proxies[2].addr()+"\r\n"; got != want {
		t.Errorf("GET foo = %q, want %q", got, want)
	}
	nodes := rawDo(c, "CLUSTER", "NODES")
	for i, up := range upstreams {
		if strings.Contains(nodes, up+"@") || !strings.Contains(nodes, proxies[i].addr()+"@") {
			t.Errorf("CLUSTER NODES does not show %s as %s:\n%s", up, proxies[i].addr(), nodes)
		}
	}

	// go-redis: every key works, and only proxies are used.
	ctx := context.Background()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{proxies[0].addr()}})
	defer cc.Close()
	for i := range 100 {
		k := fmt.Sprintf("key:%d", i)
		if err := cc.Set(ctx, k, i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
	}
	if err := cc.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error {
		for _, p := range proxies {
			if c.Options().Addr == p.addr() {
				return nil
			}
		}
		return fmt.Errorf("go-redis connected to %s, not a proxy", c.Options().Addr)
	}); err != nil {
		t.Error(err)
	}
	for i, p := range proxies {
		if p.accepted.Load() == 0 {
			t.Errorf("proxy of node %d was never used", i)
		}
	}

	// redis-cli -c follows the MOVED to the proxy of the third node.
	if _, err := exec.LookPath("redis-cli"); err == nil {
		before := proxies[2].accepted.Load()
		_, port0, _ := net.SplitHostPort(proxies[0].addr())
		out, err := exec.Command("redis-cli", "-c", "-p", port0, "SET", "foo", "bar").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "OK" {
			t.Errorf("redis-cli -c SET foo: %v\n%s", err, out)
		}
		if proxies[2].accepted.Load() == before {
			t.Errorf("redis-cli -c did not follow the redirect to the proxy of node 2")
		}
	}

	// redis-benchmark --cluster reads CLUSTER NODES and connects to every node.
	if _, err := exec.LookPath("redis-benchmark"); err == nil {
		var before []int32
		for _, p := range proxies {
			before = append(before, p.accepted.Load())
		}
		_, port0, _ := net.SplitHostPort(proxies[0].addr())
		out, err := exec.Command("redis-benchmark", "--cluster", "-p", port0, "-n", "2000", "-c", "3", "-P", "10",
			"-t", "set,get", "-q").CombinedOutput()
		if err != nil {
			t.Errorf("redis-benchmark --cluster: %v\n%s", err, out)
		}
		t.Logf("redis-benchmark --cluster:\n%s", out)
		for i, p := range proxies {
			if p.accepted.Load() == before[i] {
				t.Errorf("redis-benchmark did not use the proxy of node %d", i)
			}
		}
	}
}
