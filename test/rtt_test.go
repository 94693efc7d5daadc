package test

// Round trips counted: a forwarder on loopback delays every packet (UDP)
// or chunk (TCP) by half of rttD in each direction, so each round trip of
// the protocol costs rttD. The time from starting a client to its first
// reply, and of a new local connection plus PING, divided by rttD, is the
// number of round trips the protocol needs (loopback's own time is a few
// milliseconds, far below one rttD).

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// rttD is the round-trip time the forwarder adds.
const rttD = 200 * time.Millisecond

// delayed is one chunk or datagram due at a time.
type delayed struct {
	at time.Time
	b  []byte
}

// delayPipe copies src to dst, each chunk delivered d after it was read,
// in order.
func delayPipe(dst, src net.Conn, d time.Duration) {
	q := make(chan delayed, 4096)
	go func() {
		defer func() {
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			} else {
				dst.Close()
			}
		}()
		for p := range q {
			time.Sleep(time.Until(p.at))
			if _, err := dst.Write(p.b); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			q <- delayed{at: time.Now().Add(d), b: append([]byte(nil), buf[:n]...)}
		}
		if err != nil {
			close(q)
			return
		}
	}
}

// delayTCP forwards TCP connections to upstream, adding rtt per round
// trip; it returns its address.
func delayTCP(t testing.TB, upstream string, rtt time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				// The local connect returns at once, so the TCP
				// handshake is played after it: the client's first
				// bytes (sent, really, after its SYN and the SYN-ACK,
				// one RTT) reach the gateway 1.5 RTT after the connect,
				// when the gateway's accept (the client's ACK) happens
				// too; the gateway's first bytes reach the client half
				// an RTT after they were sent, 2 RTT after the connect.
				time.Sleep(rtt)
				u, err := net.Dial("tcp", upstream)
				if err != nil {
					c.Close()
					return
				}
				t.Cleanup(func() { c.Close(); u.Close() })
				go delayPipe(u, c, rtt/2)
				time.Sleep(rtt / 2)
				go delayPipe(c, u, rtt/2)
			}()
		}
	}()
	return ln.Addr().String()
}

// delayUDP forwards datagrams to upstream (one upstream socket per client
// address), each delayed by rtt/2 per direction; it returns its address.
func delayUDP(t testing.TB, upstream string, rtt time.Duration) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up, err := net.ResolveUDPAddr("udp", upstream)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	peers := map[string]*net.UDPConn{}
	t.Cleanup(func() {
		pc.Close()
		mu.Lock()
		for _, u := range peers {
			u.Close()
		}
		mu.Unlock()
	})
	later := func(d time.Duration, f func()) { time.AfterFunc(d, f) }
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			b := append([]byte(nil), buf[:n]...)
			mu.Lock()
			u := peers[from.String()]
			if u == nil {
				u, err = net.DialUDP("udp", nil, up)
				if err != nil {
					mu.Unlock()
					continue
				}
				peers[from.String()] = u
				go func() {
					rb := make([]byte, 65536)
					for {
						n, err := u.Read(rb)
						if err != nil {
							return
						}
						b := append([]byte(nil), rb[:n]...)
						later(rtt/2, func() { pc.WriteTo(b, from) })
					}
				}()
			}
			mu.Unlock()
			later(rtt/2, func() { u.Write(b) })
		}
	}()
	return pc.LocalAddr().String()
}

// delayedGateway is a gateway reached through delay forwarders.
type delayedGateway struct {
	g          *gateway
	quic, tls  string
	ssh        string
	knownHosts string
}

func (d *delayedGateway) ServerAddr(transport string) string {
	switch transport {
	case "quic":
		return d.quic
	case "ssh":
		return d.ssh
	}
	return d.tls
}

func (d *delayedGateway) KnownHosts(t testing.TB) string { return d.knownHosts }

func newDelayedGateway(t testing.TB, g *gateway, rtt time.Duration) *delayedGateway {
	d := &delayedGateway{g: g, quic: delayUDP(t, g.Addr, rtt), tls: delayTCP(t, g.Addr, rtt)}
	if g.SSHAddr != "" {
		d.ssh = delayTCP(t, g.SSHAddr, rtt)
	}
	d.knownHosts = writeKnownHosts(t, g.HostKey, d.quic, d.tls, d.ssh)
	return d
}

// pingOnce dials addr, sends PING and reads +PONG.
func pingOnce(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 7)
	n := 0
	for n < 7 {
		m, err := c.Read(buf[n:])
		if err != nil {
			return err
		}
		n += m
		if n >= 7 || (n > 0 && buf[n-1] == '\n') {
			break
		}
	}
	if string(buf[:n]) != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", buf[:n])
	}
	return nil
}

// TestRTT_FirstReplyAndNewConnection counts the round trips from starting
// a client to the first reply through its local port (dialled from the
// start, as a user's redis-cli would be), and of a new local connection
// plus PING once the session is up. Bounds, in round trips of rttD, each
// with 0.75 round trip of slack for loopback's own time and the CPU of the
// handshakes (under -race, on a shared machine), so that one round trip
// more than the bound still fails:
//
//	first reply: quic 2 (QUIC handshake, then the Hello with the stream
//	  + PING right behind it: client/early.go),
//	  tls 3 (TCP, TLS 1.3, then the Hello with the stream + PING right
//	  behind it),
//	  ssh 10 (TCP, versions, key exchange, then x/crypto's service request,
//	  "none" and publickey query before the signed publickey: 7; control
//	  channel open, Hello/Welcome, stream + PING);
//	new connection + PING: 1 on every transport (on SSH the PING rides in
//	  the channel-open, Welcome OpenPayload).
func TestRTT_FirstReplyAndNewConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("counts round trips over a delayed loopback link")
	}
	r := testenv.StartRedis(t)
	k := newKey(t, "rtt")
	g := startGateway(t, redisTarget(r), []string{k.Line})
	d := newDelayedGateway(t, g, rttD)
	bounds := map[string]struct{ first, newconn float64 }{
		"quic": {2, 1},
		"tls":  {3, 1},
		"ssh":  {10, 1},
	}
	forEachTransport(t, func(t *testing.T, transport string) {
		port := testenv.FreeLoopbackListener(t)
		lport := port.Addr().(*net.TCPAddr).Port
		port.Close()
		local := fmt.Sprintf("127.0.0.1:%d", lport)
		logger, _ := newTestLogger(t)
		o := client.Options{
			Profile: "cache", Target: "cache", Servers: []string{d.ServerAddr(transport)},
			Transport: transport, Identity: k.Path, LocalPort: &lport, KnownHosts: d.knownHosts,
			Logger: logger, Ping: 10 * time.Second,
		}
		cl, err := client.New(o)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- cl.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		var first time.Duration
		for {
			if time.Since(start) > 20*time.Second {
				t.Fatal("no reply within 20 s")
			}
			err := pingOnce(local, 10*time.Second)
			if err == nil {
				first = time.Since(start)
				break
			}
			var op *net.OpError
			if !errors.As(err, &op) || op.Op != "dial" {
				t.Logf("first ping: %v", err)
			}
			time.Sleep(time.Millisecond)
		}
		var worst time.Duration
		for range 3 {
			t0 := time.Now()
			if err := pingOnce(local, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			worst = max(worst, time.Since(t0))
		}
		b := bounds[transport]
		rf, rn := float64(first)/float64(rttD), float64(worst)/float64(rttD)
		t.Logf("%s: first reply %v = %.2f round trips (bound %.0f); new connection + PING %v = %.2f round trips (bound %.0f)",
			transport, first.Round(time.Millisecond), rf, b.first, worst.Round(time.Millisecond), rn, b.newconn)
		if rf > b.first+0.75 {
			t.Errorf("%s: first reply took %.2f round trips, want at most %.0f", transport, rf, b.first)
		}
		if rn > b.newconn+0.75 {
			t.Errorf("%s: new connection + PING took %.2f round trips, want at most %.0f", transport, rn, b.newconn)
		}
	})
}

// TestRTT_EarlyStreamRefusedWithSession: a local connection accepted
// before the first Welcome sends its stream right behind the Hello on TLS
// and QUIC; when the gateway refuses the Hello (a key it does not know)
// that stream is never served: the upstream (a TCP target that counts its
// connections) is never dialled, the local connection is closed without a
// byte, and Run returns the refusal. The gateway reads the client's end of
// the session at once (the held stream does not stall it): no read of a
// next Hello runs into auth_timeout (2 s here).
func TestRTT_EarlyStreamRefusedWithSession(t *testing.T) {
	for _, tr := range []string{"tls", "quic"} {
		t.Run(tr, func(t *testing.T) { testEarlyStreamRefused(t, tr) })
	}
}

func testEarlyStreamRefused(t *testing.T, transport string) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	var dialled sync.WaitGroup
	accepts := make(chan struct{}, 16)
	dialled.Add(1)
	go func() {
		defer dialled.Done()
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			accepts <- struct{}{}
			c.Close()
		}
	}()
	known, stranger := newKey(t, "known"), newKey(t, "stranger")
	g := startGateway(t, map[string]*server.Target{"svc": {Type: server.TypeTCP, Nodes: []string{up.Addr().String()}}}, []string{known.Line},
		func(c *server.Config) { c.Limits.AuthTimeout = 2 * time.Second })
	d := newDelayedGateway(t, g, rttD)
	port := testenv.FreeLoopbackListener(t)
	lport := port.Addr().(*net.TCPAddr).Port
	port.Close()
	local := fmt.Sprintf("127.0.0.1:%d", lport)
	logger, tl := newTestLogger(t)
	cl, err := client.New(client.Options{Profile: "svc", Target: "svc", Servers: []string{d.ServerAddr(transport)},
		Transport: transport, Identity: stranger.Path, LocalPort: &lport, KnownHosts: d.knownHosts, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cl.Run(context.Background()) }()
	var lc net.Conn
	waitFor(t, 5*time.Second, "the local port before the session", func() bool {
		lc, err = net.Dial("tcp", local)
		return err == nil
	})
	defer lc.Close()
	if _, err := lc.Write([]byte("hello upstream\n")); err != nil {
		t.Fatal(err)
	}
	_ = lc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, rerr := lc.Read(make([]byte, 64))
	if n != 0 || rerr == nil {
		t.Fatalf("local connection read %d bytes, %v; want it closed without a byte", n, rerr)
	}
	var ne net.Error
	if errors.As(rerr, &ne) && ne.Timeout() {
		t.Fatal("the local connection was left open after the refusal")
	}
	select {
	case err := <-done:
		if !errors.Is(err, client.ErrAuthFailed) {
			t.Fatalf("Run: %v, want the refusal of the key", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the refusal")
	}
	_ = tl
	time.Sleep(2500 * time.Millisecond) // past auth_timeout
	if strings.Contains(g.Log.String(), "i/o timeout") {
		t.Fatal("the gateway waited out auth_timeout for a next Hello behind the held stream")
	}
	up.Close()
	dialled.Wait()
	if len(accepts) != 0 {
		t.Fatalf("the upstream was dialled %d times for a refused session", len(accepts))
	}
	if strings.Contains(g.Log.String(), "msg=stream ") {
		t.Fatal("the gateway served a stream of a refused session")
	}
}

// TestRTT_EarlyStreamClusterRewritten: on a Redis Cluster target, a first
// request sent before the Welcome (on TLS and QUIC its stream goes right
// behind the Hello, before the client knows the target's type) still
// passes the cluster rewriter: CLUSTER SLOTS answers with the client's
// local ports, not the nodes' addresses, and the connection goes on with a
// second request.
func TestRTT_EarlyStreamClusterRewritten(t *testing.T) {
	if testing.Short() {
		t.Skip("a Redis Cluster and a delayed link")
	}
	cl := testenv.StartCluster(t, 3, 0)
	k := newKey(t, "rtt")
	g := startGateway(t, map[string]*server.Target{
		"prod": {Type: server.TypeRedisCluster, Nodes: []string{cl.Nodes[0].Addr}, Refresh: time.Hour, Networks: loopbackNetworks},
	}, []string{k.Line})
	d := newDelayedGateway(t, g, rttD)
	for _, tr := range []string{"tls", "quic"} {
		t.Run(tr, func(t *testing.T) { testEarlyStreamCluster(t, tr, cl, k, d) })
	}
}

func testEarlyStreamCluster(t *testing.T, transport string, cl *testenv.Cluster, k key, d *delayedGateway) {
	lport := freePortBlock(t, len(cl.Nodes)) // node i listens on lport+i
	local := fmt.Sprintf("127.0.0.1:%d", lport)
	logger, _ := newTestLogger(t)
	c, err := client.New(client.Options{Profile: "prod", Target: "prod", Servers: []string{d.ServerAddr(transport)},
		Transport: transport, Identity: k.Path, LocalPort: &lport, KnownHosts: d.knownHosts, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	var lc net.Conn
	waitFor(t, 5*time.Second, "the local port before the session", func() bool {
		lc, err = net.Dial("tcp", local)
		return err == nil
	})
	defer lc.Close()
	select {
	case <-c.Ready():
		t.Fatal("the session was up before the first request: it would not be early")
	default:
	}
	// go-redis's connection set-up (HELLO, CLIENT SETINFO) are the
	// early requests; the rewriter must have seen them to pair the
	// replies that follow.
	var once sync.Once
	rc := redis.NewClient(&redis.Options{PoolSize: 1, MaxRetries: -1, ReadTimeout: 20 * time.Second, WriteTimeout: 20 * time.Second,
		Dialer: func(context.Context, string, string) (net.Conn, error) {
			var conn net.Conn
			once.Do(func() { conn = lc })
			if conn == nil {
				return nil, errors.New("one connection only")
			}
			return conn, nil
		}})
	defer rc.Close()
	//lint:ignore SA1019 CLUSTER SLOTS is what the early stream must see rewritten, as older clients send it
	slots, err := rc.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]bool{}
	for _, n := range cl.Nodes {
		nodes[n.Addr] = true
	}
	local0 := false
	for _, s := range slots {
		for _, n := range s.Nodes {
			if nodes[n.Addr] {
				t.Fatalf("CLUSTER SLOTS through the early stream names a node's own address %s: %+v", n.Addr, slots)
			}
			local0 = local0 || n.Addr == local
		}
	}
	if !local0 {
		t.Fatalf("CLUSTER SLOTS through the early stream does not name the local port %s: %+v", local, slots)
	}
	if err := rc.Ping(ctx).Err(); err != nil {
		t.Fatalf("second request: %v", err)
	}
}

// freePortBlock returns the first of n consecutive loopback ports that
// were free a moment ago, below the kernel's ephemeral range (where
// outgoing connections of a busy machine take every other port).
func freePortBlock(t testing.TB, n int) int {
	t.Helper()
	for try := 0; try < 100; try++ {
		base := 20000 + mrand.IntN(12000)
		var ls []net.Listener
		ok := true
		for i := 0; i < n; i++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, l)
		}
		for _, l := range ls {
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatalf("no %d consecutive free ports", n)
	return 0
}
