package test

// Dead paths, failover and drain (issue 12): a gateway that stops
// answering is noticed and replaced, the next listed gateway takes new
// connections, and a draining gateway's GoAway moves new connections at
// once. The faults are made on loopback by faultyPath, a TCP and UDP
// forwarder in front of a gateway that the test tells to stop passing
// packets (a black hole: no error, nothing passes) or only UDP.

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// faultyPath forwards one loopback port, TCP and UDP, to a gateway's.
type faultyPath struct {
	Addr   string
	tcpTo  string
	udpTo  string      // "" forwards no UDP
	holeAt atomic.Bool // nothing passes any more
	noUDP  atomic.Bool // UDP no longer passes
	tcp    net.Listener
	udp    *net.UDPConn
	wg     sync.WaitGroup
	done   chan struct{}
	mu     sync.Mutex
	conns  []net.Conn
}

func newFaultyPath(t testing.TB, tcpTo, udpTo string) *faultyPath {
	t.Helper()
	p := &faultyPath{tcpTo: tcpTo, udpTo: udpTo, done: make(chan struct{})}
	var err error
	for i := 0; ; i++ {
		p.Addr = freeTCPUDPPort(t)
		if p.tcp, err = net.Listen("tcp", p.Addr); err == nil {
			if udpTo == "" {
				break
			}
			ua, _ := net.ResolveUDPAddr("udp", p.Addr)
			if p.udp, err = net.ListenUDP("udp", ua); err == nil {
				break
			}
			p.tcp.Close()
		}
		if i == 5 {
			t.Fatalf("faulty path listen: %v", err)
		}
	}
	p.wg.Add(1)
	go p.acceptTCP()
	if p.udp != nil {
		p.wg.Add(1)
		go p.serveUDP()
	}
	t.Cleanup(p.close)
	return p
}

// BlackHole stops every packet from now on, without an error.
func (p *faultyPath) BlackHole() { p.holeAt.Store(true) }

// DropUDP stops UDP from now on; TCP still passes.
func (p *faultyPath) DropUDP() { p.noUDP.Store(true) }

func (p *faultyPath) close() {
	close(p.done)
	p.tcp.Close()
	if p.udp != nil {
		p.udp.Close()
	}
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *faultyPath) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

func (p *faultyPath) acceptTCP() {
	defer p.wg.Done()
	for {
		c, err := p.tcp.Accept()
		if err != nil {
			return
		}
		p.track(c)
		if p.holeAt.Load() {
			continue // held open, never answered
		}
		up, err := net.Dial("tcp", p.tcpTo)
		if err != nil {
			c.Close()
			continue
		}
		p.track(up)
		p.wg.Add(2)
		go p.pipe(up, c)
		go p.pipe(c, up)
	}
}

// pipe copies until the black hole: from then on it reads nothing (the
// kernel buffers fill, the sender's writes stall) and writes nothing.
func (p *faultyPath) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if p.holeAt.Load() {
			<-p.done
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if cw, ok := dst.(*net.TCPConn); ok {
				_ = cw.CloseWrite()
			}
			return
		}
	}
}

func (p *faultyPath) serveUDP() {
	defer p.wg.Done()
	to, _ := net.ResolveUDPAddr("udp", p.udpTo)
	peers := map[string]*net.UDPConn{}
	defer func() {
		for _, u := range peers {
			u.Close()
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := p.udp.ReadFromUDP(buf)
		if err != nil {
			return
		}
		if p.holeAt.Load() || p.noUDP.Load() {
			continue
		}
		up := peers[from.String()]
		if up == nil {
			if up, err = net.DialUDP("udp", nil, to); err != nil {
				continue
			}
			peers[from.String()] = up
			p.wg.Add(1)
			go func(up *net.UDPConn, back *net.UDPAddr) {
				defer p.wg.Done()
				b := make([]byte, 64<<10)
				for {
					n, err := up.Read(b)
					if err != nil {
						return
					}
					if p.holeAt.Load() || p.noUDP.Load() {
						continue
					}
					_, _ = p.udp.WriteToUDP(b[:n], back)
				}
			}(up, from)
		}
		_, _ = up.Write(buf[:n])
	}
}

// trySET sends one SET through local within 1.5 s and reports whether it
// was answered +OK.
func trySET(local, key, val string) bool {
	c, err := net.DialTimeout("tcp", local, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
	if _, err := io.WriteString(c, "SET "+key+" "+val+"\r\n"); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && line == "+OK\r\n"
}

// untilSET retries trySET until one works with the session on server (any
// when empty) and returns how long that took from since; it fails the test
// after limit + 2 s.
func untilSET(t *testing.T, c *connect, local, key, val, server string, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	for time.Since(since) < limit+2*time.Second {
		if trySET(local, key, val) && (server == "" || c.Client.Status().Server == server) {
			return time.Since(since)
		}
	}
	t.Fatalf("no new connection worked within %s", limit+2*time.Second)
	return 0
}

// knownHostsFile pins each gateway's host key at each of its addresses.
func knownHostsFile(t *testing.T, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestDeadPath_UDPDropped: a QUIC session (auto) whose UDP stops passing
// mid-session, TCP still passing, is declared dead and replaced over TLS:
// new connections work again within 5 s of the drop (the bar).
func TestDeadPath_UDPDropped(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "alice")
	g := startGateway(t, map[string]*server.Target{"cache": {Type: server.TypeRedis, Nodes: []string{r.Addr}}}, []string{k.Line})
	p := newFaultyPath(t, g.Addr, g.Addr)
	kh := knownHostsFile(t, knownHostsLine(p.Addr, g.HostKey))
	c := mustConnect(t, g, "auto", "cache", k, func(o *client.Options) {
		o.Servers, o.KnownHosts = []string{p.Addr}, kh
	})
	if st := c.Client.Status(); st.Transport != "quic" {
		t.Fatalf("auto chose %s, want quic", st.Transport)
	}
	local := c.Local(t, r.Addr)
	if !trySET(local, "k", "before") {
		t.Fatal("SET before the drop failed")
	}
	p.DropUDP()
	start := time.Now()
	took := untilSET(t, c, local, "k", "after", "", start, 5*time.Second)
	t.Logf("new connections work %s after UDP was dropped (bound 5s)", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Fatalf("new connections worked %s after UDP was dropped, want within 5s", took.Round(time.Millisecond))
	}
	if st := c.Client.Status(); st.Transport != "tls" {
		t.Fatalf("after UDP was dropped the session runs over %s, want tls", st.Transport)
	}
	if got := r.Client(t).Get(context.Background(), "k").Val(); got != "after" {
		t.Fatalf("redis holds %q, want %q", got, "after")
	}
	c.Log.waitLog(t, "session declared dead")
}

// TestFailover_TwoGateways: with two gateways listed, when the one in use
// dies new connections work through the other: within 2 s when the death
// is reported (the gateway closed, its sessions end), and within 5 s when
// it is silent (a black hole: DeadAfter 2 s + ProbeTimeout 1 s at worst,
// then the other gateway is dialled first).
func TestFailover_TwoGateways(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		for _, death := range []struct {
			name  string
			limit time.Duration
		}{{"closed", 2 * time.Second}, {"black hole", 2 * time.Second}} {
			t.Run(strings.ReplaceAll(death.name, " ", "_"), func(t *testing.T) {
				// Both gateways front the same redis, as two gateways of one
				// target do: the client's local port is per node.
				r := testenv.StartRedis(t)
				k := newKey(t, "alice")
				targets := map[string]*server.Target{"cache": {Type: server.TypeRedis, Nodes: []string{r.Addr}}}
				gA := startGateway(t, targets, []string{k.Line})
				gB := startGateway(t, targets, []string{k.Line})
				aAddr := gA.ServerAddr(transport)
				udp := aAddr
				if transport == "ssh" {
					udp = ""
				}
				p := newFaultyPath(t, aAddr, udp)
				kh := knownHostsFile(t, knownHostsLine(p.Addr, gA.HostKey), knownHostsLine(gB.ServerAddr(transport), gB.HostKey))
				c := mustConnect(t, gA, transport, "cache", k, func(o *client.Options) {
					o.Servers, o.KnownHosts = []string{p.Addr, gB.ServerAddr(transport)}, kh
				})
				local := c.Local(t, r.Addr)
				if !trySET(local, "k", "a") || c.Client.Status().Server != p.Addr {
					t.Fatalf("SET through the first gateway failed (session to %s)", c.Client.Status().Server)
				}
				start := time.Now()
				switch death.name {
				case "closed":
					gA.Kill()
				default:
					p.BlackHole()
				}
				took := untilSET(t, c, local, "k", "b", gB.ServerAddr(transport), start, death.limit)
				t.Logf("%s over %s: new connections work through the other gateway %s after the death (bound %s)", death.name, transport, took.Round(time.Millisecond), death.limit)
				if took > death.limit {
					t.Fatalf("new connections worked %s after the gateway's death, want within %s", took.Round(time.Millisecond), death.limit)
				}
				if got, want := c.Client.Status().Server, gB.ServerAddr(transport); got != want {
					t.Fatalf("the session runs to %s, want the second gateway %s", got, want)
				}
				if got := r.Client(t).Get(context.Background(), "k").Val(); got != "b" {
					t.Fatalf("redis holds %q, want %q", got, "b")
				}
			})
		}
	})
}

// TestDrain_GoAwayMovesNewConnections: a gateway that drains sends GoAway;
// with two gateways listed, new connections work through the other one at
// once (within 2 s of the drain's start, not after drain_timeout), the
// connection open through the draining one keeps working, and at
// drain_timeout (3 s) it is closed at both ends: the local connection ends
// and the upstream redis no longer has it.
func TestDrain_GoAwayMovesNewConnections(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		r := testenv.StartRedis(t)
		k := newKey(t, "alice")
		targets := map[string]*server.Target{"cache": {Type: server.TypeRedis, Nodes: []string{r.Addr}}}
		gA := startGateway(t, targets, []string{k.Line})
		gB := startGateway(t, targets, []string{k.Line})
		kh := knownHostsFile(t, knownHostsLine(gA.ServerAddr(transport), gA.HostKey), knownHostsLine(gB.ServerAddr(transport), gB.HostKey))
		c := mustConnect(t, gA, transport, "cache", k, func(o *client.Options) {
			o.Servers, o.KnownHosts = []string{gA.ServerAddr(transport), gB.ServerAddr(transport)}, kh
		})
		local := c.Local(t, r.Addr)
		held, err := net.Dial("tcp", local)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		hr := bufio.NewReader(held)
		ask := func(cmd, want string) {
			t.Helper()
			_ = held.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(held, cmd+"\r\n"); err != nil {
				t.Fatalf("%s on the held connection: %v", cmd, err)
			}
			if line, err := hr.ReadString('\n'); err != nil || line != want+"\r\n" {
				t.Fatalf("%s on the held connection: %q, %v; want %q", cmd, line, err, want)
			}
		}
		ask("CLIENT SETNAME held", "+OK")
		hasHeld := func() bool {
			return strings.Contains(r.Client(t).ClientList(context.Background()).Val(), "name=held")
		}
		if !hasHeld() {
			t.Fatal("the held connection is not in redis's CLIENT LIST")
		}
		drained := make(chan struct{})
		start := time.Now()
		go func() {
			defer close(drained)
			gA.Srv.Drain(context.Background())
		}()
		took := untilSET(t, c, local, "k", "b", gB.ServerAddr(transport), start, 2*time.Second)
		t.Logf("over %s new connections work through the other gateway %s after the drain began (bound 2s; drain_timeout 3s)", transport, took.Round(time.Millisecond))
		if took > 2*time.Second {
			t.Fatalf("new connections worked %s after the drain began, want within 2s", took.Round(time.Millisecond))
		}
		if got, want := c.Client.Status().Server, gB.ServerAddr(transport); got != want {
			t.Fatalf("the session runs to %s, want the second gateway %s", got, want)
		}
		select {
		case <-drained:
			t.Fatal("the drain ended before drain_timeout with a stream open")
		default:
		}
		ask("PING", "+PONG") // the held one still goes through the draining gateway
		// At drain_timeout (3 s) the held connection ends at both ends.
		_ = held.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = hr.ReadString('\n')
		ended := time.Since(start)
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("the held connection did not end within 10s of the drain (err %v)", err)
		}
		t.Logf("the held connection ended %s after the drain began (drain_timeout 3s)", ended.Round(time.Millisecond))
		if ended < 3*time.Second {
			t.Fatalf("the held connection ended %s after the drain began, before drain_timeout 3s", ended.Round(time.Millisecond))
		}
		waitFor(t, 5*time.Second, "the upstream end of the held connection to close", func() bool { return !hasHeld() })
		<-drained
	})
}

// TestDeadPath_StalledWrite: a request written on a connection held open
// through a gateway that went silent (a black hole) makes no progress; with
// no new connection opened, that stall alone is noticed: a probe goes out
// after DeadAfter (2 s), it goes unanswered for ProbeTimeout (1 s), the
// session is declared dead and the client is on the other listed gateway
// within 5 s of the write (2 s + 1 s + the new session).
func TestDeadPath_StalledWrite(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		r := testenv.StartRedis(t)
		k := newKey(t, "alice")
		targets := map[string]*server.Target{"cache": {Type: server.TypeRedis, Nodes: []string{r.Addr}}}
		gA := startGateway(t, targets, []string{k.Line})
		gB := startGateway(t, targets, []string{k.Line})
		aAddr, udp := gA.ServerAddr(transport), gA.ServerAddr(transport)
		if transport == "ssh" {
			udp = ""
		}
		p := newFaultyPath(t, aAddr, udp)
		kh := knownHostsFile(t, knownHostsLine(p.Addr, gA.HostKey), knownHostsLine(gB.ServerAddr(transport), gB.HostKey))
		c := mustConnect(t, gA, transport, "cache", k, func(o *client.Options) {
			o.Servers, o.KnownHosts = []string{p.Addr, gB.ServerAddr(transport)}, kh
			o.Ping = time.Minute // no keepalive within the test: the stall is what is noticed
		})
		held, err := net.Dial("tcp", c.Local(t, r.Addr))
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		hr := bufio.NewReader(held)
		_ = held.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(held, "PING\r\n"); err != nil {
			t.Fatal(err)
		}
		if line, err := hr.ReadString('\n'); err != nil || line != "+PONG\r\n" {
			t.Fatalf("PING on the held connection: %q, %v", line, err)
		}
		p.BlackHole()
		start := time.Now()
		if _, err := io.WriteString(held, "PING\r\n"); err != nil {
			t.Fatal(err)
		}
		want := gB.ServerAddr(transport)
		waitFor(t, 5*time.Second, "the session to move to the other gateway", func() bool { return c.Client.Status().Server == want })
		took := time.Since(start)
		t.Logf("over %s a stalled write moved the session to the other gateway in %s (bound 5s; DeadAfter 2s + ProbeTimeout 1s)", transport, took.Round(time.Millisecond))
		if took < 2*time.Second {
			t.Fatalf("the session moved %s after the write, before DeadAfter (2s): something else than the stall was noticed", took.Round(time.Millisecond))
		}
		if !strings.Contains(c.Log.String(), "no progress for 2s") {
			t.Fatalf("the client's log does not say a stream made no progress:\n%s", c.Log.String())
		}
	})
}

// TestDeadPath_IdleSession: an idle session (no stream) through a gateway
// that went silent is noticed by the keepalive (default Ping 10 s, answer
// within 5 s) and replaced within 20 s (the bar); the measured time
// is logged.
func TestDeadPath_IdleSession(t *testing.T) {
	if testing.Short() {
		t.Skip("waits up to 20 s per transport")
	}
	forEachTransport(t, func(t *testing.T, transport string) {
		r := testenv.StartRedis(t)
		k := newKey(t, "alice")
		targets := map[string]*server.Target{"cache": {Type: server.TypeRedis, Nodes: []string{r.Addr}}}
		gA := startGateway(t, targets, []string{k.Line})
		gB := startGateway(t, targets, []string{k.Line})
		aAddr, udp := gA.ServerAddr(transport), gA.ServerAddr(transport)
		if transport == "ssh" {
			udp = ""
		}
		p := newFaultyPath(t, aAddr, udp)
		kh := knownHostsFile(t, knownHostsLine(p.Addr, gA.HostKey), knownHostsLine(gB.ServerAddr(transport), gB.HostKey))
		c := mustConnect(t, gA, transport, "cache", k, func(o *client.Options) {
			o.Servers, o.KnownHosts = []string{p.Addr, gB.ServerAddr(transport)}, kh
			o.Ping = 0 // the default, 10 s
		})
		p.BlackHole()
		start := time.Now()
		want := gB.ServerAddr(transport)
		waitFor(t, 20*time.Second, "the idle session to move to the other gateway", func() bool { return c.Client.Status().Server == want })
		t.Logf("over %s an idle dead session was replaced in %s (bound 20s)", transport, time.Since(start).Round(time.Millisecond))
	})
}
