package test

// Streams that resume across sessions (issue 12, tunnel/PROTOCOL.md
// "Resumable streams"): a real redis-server SUBSCRIBE held through a
// cachetun connect whose session is killed on purpose, on quic, tls and
// ssh, against the real gateway binary; the grace running out; old peers;
// and the memory of 1,000 resumable streams on a gateway process.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
	"github.com/cachetun/cachetun/tunnel"
)

// cutPath forwards one loopback port, TCP and UDP, to a gateway's. Cut
// kills every connection and UDP flow open now (TCP: closed, which the
// client's transport sees at once; UDP: dropped from then on, so QUIC
// finds out by its keepalive) while new ones pass; Block refuses new ones
// too.
type cutPath struct {
	Addr         string
	tcpTo, udpTo string
	gen          atomic.Int64
	holeGen      atomic.Int64 // flows of an older generation pass nothing, silently
	blocked      atomic.Bool
	tcp          net.Listener
	udp          *net.UDPConn
	wg           sync.WaitGroup
	mu           sync.Mutex
	conns        map[net.Conn]int64 // TCP connection → generation
}

func newCutPath(t testing.TB, tcpTo, udpTo string) *cutPath {
	t.Helper()
	p := &cutPath{tcpTo: tcpTo, udpTo: udpTo, conns: make(map[net.Conn]int64)}
	var err error
	for i := 0; ; i++ {
		p.Addr = freeTCPUDPPort(t)
		if p.tcp, err = net.Listen("tcp", p.Addr); err == nil {
			ua, _ := net.ResolveUDPAddr("udp", p.Addr)
			if p.udp, err = net.ListenUDP("udp", ua); err == nil {
				break
			}
			p.tcp.Close()
		}
		if i == 5 {
			t.Fatalf("cut path listen: %v", err)
		}
	}
	p.wg.Add(2)
	go p.acceptTCP()
	go p.serveUDP()
	t.Cleanup(p.close)
	return p
}

// Cut kills what is open now.
func (p *cutPath) Cut() {
	g := p.gen.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	for c, cg := range p.conns {
		if cg < g {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			c.Close()
			delete(p.conns, c)
		}
	}
}

// Hole makes what is open now a black hole: nothing passes, nothing is
// closed, while new connections and flows pass.
func (p *cutPath) Hole() { p.holeGen.Store(p.gen.Add(1)) }

// Block refuses new connections and flows from now on.
func (p *cutPath) Block() { p.blocked.Store(true) }

func (p *cutPath) close() {
	p.Block()
	p.tcp.Close()
	p.udp.Close()
	p.Cut()
	p.wg.Wait()
}

func (p *cutPath) acceptTCP() {
	defer p.wg.Done()
	for {
		c, err := p.tcp.Accept()
		if err != nil {
			return
		}
		if p.blocked.Load() {
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.tcpTo)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		g := p.gen.Load()
		p.conns[c], p.conns[up] = g, g
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(up, c, g)
		go p.pipe(c, up, g)
	}
}

func (p *cutPath) pipe(dst, src net.Conn, g int64) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && g >= p.holeGen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

func (p *cutPath) serveUDP() {
	defer p.wg.Done()
	to, _ := net.ResolveUDPAddr("udp", p.udpTo)
	type flow struct {
		up  *net.UDPConn
		gen int64
	}
	flows := map[string]*flow{}
	defer func() {
		for _, f := range flows {
			f.up.Close()
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := p.udp.ReadFromUDP(buf)
		if err != nil {
			return
		}
		f := flows[from.String()]
		if f == nil {
			if p.blocked.Load() || p.udpTo == "" {
				continue
			}
			up, err := net.DialUDP("udp", nil, to)
			if err != nil {
				continue
			}
			f = &flow{up: up, gen: p.gen.Load()}
			flows[from.String()] = f
			p.wg.Add(1)
			go func(f *flow, back *net.UDPAddr) {
				defer p.wg.Done()
				b := make([]byte, 64<<10)
				for {
					n, err := f.up.Read(b)
					if err != nil {
						return
					}
					if f.gen < p.gen.Load() || f.gen < p.holeGen.Load() {
						continue // cut
					}
					_, _ = p.udp.WriteToUDP(b[:n], back)
				}
			}(f, from)
		}
		if f.gen < p.gen.Load() {
			continue
		}
		_, _ = f.up.Write(buf[:n])
	}
}

// pathEndpoint is a gateway reached through a cutPath.
type pathEndpoint struct {
	addr, knownHosts string
}

func (e pathEndpoint) ServerAddr(string) string     { return e.addr }
func (e pathEndpoint) KnownHosts(testing.TB) string { return e.knownHosts }

// readRESPArray reads one RESP array of bulk strings (a pub/sub push).
func readRESPArray(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(line, "*") {
		return nil, fmt.Errorf("not an array: %q", line)
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, n)
	for i := 0; i < n; i++ {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		switch line[0] {
		case ':':
			out = append(out, strings.TrimSpace(line[1:]))
		case '$':
			k, err := strconv.Atoi(strings.TrimSpace(line[1:]))
			if err != nil {
				return nil, err
			}
			b := make([]byte, k+2)
			if _, err := io.ReadFull(r, b); err != nil {
				return nil, err
			}
			out = append(out, string(b[:k]))
		default:
			return nil, fmt.Errorf("unexpected element %q", line)
		}
	}
	return out, nil
}

// subscribe opens a SUBSCRIBE to channel through local and reads its
// confirmation.
func subscribe(t *testing.T, local, channel string) (net.Conn, *bufio.Reader) {
	t.Helper()
	sub, err := net.Dial("tcp", local)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	fmt.Fprintf(sub, "SUBSCRIBE %s\r\n", channel)
	br := bufio.NewReader(sub)
	_ = sub.SetReadDeadline(time.Now().Add(10 * time.Second))
	conf, err := readRESPArray(br)
	if err != nil || len(conf) != 3 || conf[0] != "subscribe" {
		t.Fatalf("subscribe confirmation: %q, %v", conf, err)
	}
	return sub, br
}

func cacheTarget(r *testenv.Redis) map[string]string {
	return map[string]string{"cache": redisTargetYAML(r)}
}

// TestResume_SubscribeAcrossCut: a SUBSCRIBE through cachetun connect
// keeps its connection while the session under it is killed (cut: the TCP
// connection closed, or on QUIC the UDP flow dropped; hole: nothing passes
// any more and nothing is closed, so the gateway's old session lives on
// until the resume replaces it), and after the
// client's new session resumes the stream, the subscriber has every one
// of 400 numbered messages published before, during and after the cut,
// exactly once and in order, on quic, tls and ssh, against the gateway
// binary.
func TestResume_SubscribeAcrossCut(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: real gateway process, redis-server")
	}
	r := testenv.StartRedis(t)
	k := newKey(t, "alice")
	g := startGatewayProc(t, gatewayProcOpts{Targets: cacheTarget(r), Authorized: []string{k.Line}})
	pub := goredis.NewClient(&goredis.Options{Addr: r.Addr})
	t.Cleanup(func() { pub.Close() })
	for _, tc := range []struct{ tr, mode string }{
		{"quic", "cut"}, {"tls", "cut"}, {"ssh", "cut"},
		{"quic", "hole"}, {"tls", "hole"}, {"ssh", "hole"},
	} {
		tr := tc.tr
		t.Run(tr+"/"+tc.mode, func(t *testing.T) {
			udp := ""
			if tr == "quic" {
				udp = g.Addr
			}
			p := newCutPath(t, g.ServerAddr(tr), udp)
			c := mustConnect(t, pathEndpoint{p.Addr, writeKnownHosts(t, g.HostKey, p.Addr)}, tr, "cache", k)
			channel := "ch-" + tr + "-" + tc.mode
			sub, br := subscribe(t, c.Local(t, r.Addr), channel)
			const n = 400
			got := make(chan []string, 1)
			go func() {
				var msgs []string
				_ = sub.SetReadDeadline(time.Now().Add(90 * time.Second))
				for len(msgs) < n {
					m, err := readRESPArray(br)
					if err != nil {
						break
					}
					if len(m) == 3 && m[0] == "message" {
						msgs = append(msgs, m[2])
					}
				}
				got <- msgs
			}()
			ctx := context.Background()
			for i := 0; i < n; i++ {
				if err := pub.Publish(ctx, channel, strconv.Itoa(i)).Err(); err != nil {
					t.Fatalf("publish %d: %v", i, err)
				}
				if i == n/4 {
					if tc.mode == "hole" {
						p.Hole() // the gateway's old session lives on
					} else {
						p.Cut()
					}
				}
				time.Sleep(5 * time.Millisecond) // paces the publisher over the cut
			}
			var msgs []string
			select {
			case msgs = <-got:
			case <-time.After(100 * time.Second):
				t.Fatal("subscriber did not finish")
			}
			if len(msgs) != n {
				t.Fatalf("subscriber got %d messages, want %d (the connection was lost?)\nclient log:\n%s", len(msgs), n, c.Log.String())
			}
			for i, m := range msgs {
				if m != strconv.Itoa(i) {
					t.Fatalf("message %d is %q: lost, duplicated or reordered", i, m)
				}
			}
			c.Log.waitLog(t, "stream resumed on the new session")
			g.WaitLog(t, "stream resumed", 10*time.Second)
			// The same connection still works both ways.
			fmt.Fprintf(sub, "PING\r\n")
			_ = sub.SetReadDeadline(time.Now().Add(10 * time.Second))
			if m, err := readRESPArray(br); err != nil || len(m) != 2 || m[0] != "pong" {
				t.Fatalf("PING on the resumed connection: %q, %v", m, err)
			}
		})
	}
}

// TestResume_GraceExpiry: a client that cannot come back within
// resume_grace (1 s here) has its held stream closed at both ends: the
// gateway closes the upstream connection and says so, the client closes
// the local connection and says so.
func TestResume_GraceExpiry(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: real gateway process, redis-server")
	}
	r := testenv.StartRedis(t)
	k := newKey(t, "alice")
	g := startGatewayProc(t, gatewayProcOpts{Targets: cacheTarget(r), Authorized: []string{k.Line},
		Limits: map[string]string{"resume_grace": "1s"}})
	p := newCutPath(t, g.ServerAddr("tls"), "")
	c := mustConnect(t, pathEndpoint{p.Addr, writeKnownHosts(t, g.HostKey, p.Addr)}, "tls", "cache", k)
	sub, br := subscribe(t, c.Local(t, r.Addr), "grace")
	p.Block()
	p.Cut()
	g.WaitLog(t, "did not resume it within resume_grace", 20*time.Second)
	c.Log.waitLog(t, "its stream was not resumed within the gateway's grace")
	_ = sub.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("local connection still open after the grace ran out")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("local connection not closed within 10 s of the grace running out")
	}
	// The upstream connection is gone too: redis counts one client, the
	// publisher's probe below.
	waitFor(t, 10*time.Second, "redis sees the subscriber gone", func() bool {
		n, err := goredis.NewClient(&goredis.Options{Addr: r.Addr}).PubSubNumSub(context.Background(), "grace").Result()
		return err == nil && n["grace"] == 0
	})
}

// TestResume_OldPeers: a client that does not ask for resumption (as one
// before protocol 2) against the new gateway, and a new client against a
// gateway that does not offer it (resume_grace: 0), both work with plain
// streams: a connection is served, and lost with its session.
func TestResume_OldPeers(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "alice")
	targets := map[string]*server.Target{"cache": {Type: server.TypeRedis, Nodes: []string{r.Addr}}}
	for name, tc := range map[string]struct {
		gw  []gatewayOpt
		opt []connectOpt
	}{
		"v1 client, new gateway": {opt: []connectOpt{func(o *client.Options) { o.NoResume = true }}},
		"new client, no resume":  {gw: []gatewayOpt{func(c *server.Config) { c.Limits.ResumeGrace = 0 }}},
	} {
		t.Run(name, func(t *testing.T) {
			g := startGateway(t, targets, []string{k.Line}, tc.gw...)
			p := newCutPath(t, g.ServerAddr("tls"), "")
			c := mustConnect(t, pathEndpoint{p.Addr, writeKnownHosts(t, g.HostKey, p.Addr)}, "tls", "cache", k, tc.opt...)
			conn, err := net.Dial("tcp", c.Local(t, r.Addr))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			br := bufio.NewReader(conn)
			fmt.Fprintf(conn, "PING\r\n")
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if line, err := br.ReadString('\n'); err != nil || line != "+PONG\r\n" {
				t.Fatalf("PING: %q, %v", line, err)
			}
			p.Cut()
			if _, err := br.ReadByte(); err == nil {
				t.Fatal("a plain stream outlived its session")
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("a plain stream's connection not closed within 10 s of its session's death")
			}
			if strings.Contains(c.Log.String(), "stream resumed") {
				t.Fatal("a stream resumed without resumption negotiated")
			}
		})
	}
}

// TestResume_MemoryBound1000: 1,000 resumable streams on a gateway
// process, each asked for a 256 KiB value that the client does not read
// (so nothing is acknowledged), then held after their session is killed:
// the replay memory stops at the key's budget (resume_memory_per_key,
// 64 MiB by default) and the gateway's RSS grows by less than 192 MiB
// (the budget, the relays' 64 KiB copy buffers of streams blocked on it,
// and 1,000 upstream connections and relays).
func TestResume_MemoryBound1000(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end: real gateway process, 1,000 connections")
	}
	const streams = 1000
	r := testenv.StartRedis(t, "--maxclients", "4000")
	pub := goredis.NewClient(&goredis.Options{Addr: r.Addr})
	t.Cleanup(func() { pub.Close() })
	if err := pub.Set(context.Background(), "big", strings.Repeat("v", 256<<10), 0).Err(); err != nil {
		t.Fatal(err)
	}
	k := newKey(t, "alice")
	g := startGatewayProc(t, gatewayProcOpts{Targets: cacheTarget(r), Authorized: []string{k.Line},
		Limits: map[string]string{"max_streams_per_session": "2000"}})
	p := newCutPath(t, g.ServerAddr("tls"), "")
	c := mustConnect(t, pathEndpoint{p.Addr, writeKnownHosts(t, g.HostKey, p.Addr)}, "tls", "cache", k)
	local := c.Local(t, r.Addr)
	conns := make([]net.Conn, 0, streams)
	t.Cleanup(func() {
		for _, cn := range conns {
			cn.Close()
		}
	})
	for i := 0; i < streams; i++ {
		cn, err := net.Dial("tcp", local)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, cn)
		fmt.Fprintf(cn, "PING\r\n")
		b := make([]byte, 7)
		_ = cn.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadFull(cn, b); err != nil || string(b) != "+PONG\r\n" {
			t.Fatalf("stream %d: PING: %q, %v", i, b, err)
		}
		// Small local receive buffers: the client's relay blocks soon, so
		// the gateway's stream buffers what is not acknowledged.
		_ = cn.(*net.TCPConn).SetReadBuffer(4 << 10)
	}
	base := g.RSS(t)
	for _, cn := range conns {
		fmt.Fprintf(cn, "GET big\r\n")
	}
	// Let the replies flow until every bound holds (nothing outside the
	// gateway shows the moment; RSS is read twice, before and after the
	// cut, and both must hold the bound).
	time.Sleep(3 * time.Second)
	loaded := g.RSS(t)
	p.Block()
	p.Cut() // the session dies: 1,000 streams held
	// 60 s: alone the gateway logs it 0.8 s after the cut, but in a full
	// -race run on 2 busy cores the cut itself (this process's forwarder
	// closing 2,000 sockets among ~5,000 goroutines) reached both ends
	// only 17 s later, the gateway 80 ms after the client. The bound here
	// is memory, not detection time (TestResume_Subscribe* time that).
	g.WaitLog(t, "resumable streams held for a resume", 60*time.Second)
	held := g.RSS(t)
	t.Logf("gateway RSS: %d MiB with %d idle resumable streams, %d MiB with their replies unacknowledged (+%d MiB), %d MiB held detached (+%d MiB)",
		base>>20, streams, loaded>>20, (loaded-base)>>20, held>>20, (held-base)>>20)
	const bound = 192 << 20
	if loaded-base > bound || held-base > bound {
		t.Fatalf("RSS grew by %d MiB (loaded) / %d MiB (held), bound %d MiB", (loaded-base)>>20, (held-base)>>20, bound>>20)
	}
}

// dialRaw opens an authenticated session of key k to g with the client
// package's Dial (resumption asked for), for tests that open streams
// themselves.
func dialRaw(t *testing.T, g *gateway, k key) tunnel.Session {
	t.Helper()
	zero := 0
	cl, err := client.New(client.Options{Servers: []string{g.ServerAddr("tls")}, Target: "cache", Transport: "tls",
		Identity: k.Path, LocalPort: &zero, KnownHosts: g.KnownHosts(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, w, err := cl.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if w.ResumeGraceMS <= 0 {
		t.Fatalf("the gateway's Welcome offers no resumption: %+v", w)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// resumeStatus sends a resume open of id with token on sess and returns
// the gateway's answer: its receive counter, or the refusal.
func resumeStatus(t *testing.T, sess tunnel.Session, id uint64, token tunnel.ResumeToken) (uint64, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := sess.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindResume, Resumable: true, ID: id, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Abort()
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [8]byte
	if _, err := io.ReadFull(st, b[:]); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b[:]), nil
}

// TestResume_ProofAndRevocation: only the key that opened a held stream,
// with its token, resumes it; every other resume open gets the same
// refusal, whether or not the id exists; and a reload that removes the
// key ends its held streams at once (the upstream connection closes).
func TestResume_ProofAndRevocation(t *testing.T) {
	r := testenv.StartRedis(t)
	alice, bob := newKey(t, "alice"), newKey(t, "bob")
	g := startGateway(t, redisTarget(r), []string{alice.Line, bob.Line})
	base := r.ConnectedClients(t)

	// Session A opens resumable stream 42, sends PING, then dies.
	a := dialRaw(t, g, alice)
	token := tunnel.ResumeToken{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := a.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "cache", Node: r.Addr, Resumable: true, ID: 42, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 7)
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(st, b); err != nil || string(b) != "+PONG\r\n" {
		t.Fatalf("PING on a resumable stream: %q, %v", b, err)
	}
	a.Close()
	waitFor(t, 10*time.Second, "the stream held", func() bool { return strings.Contains(g.Log.String(), "resumable streams held for a resume") })
	if n := r.ConnectedClients(t); n != base+1 {
		t.Fatalf("redis has %d clients, want the held stream's upstream connection (%d)", n, base+1)
	}

	refused := func(what string, sess tunnel.Session, id uint64, tok tunnel.ResumeToken) string {
		t.Helper()
		_, err := resumeStatus(t, sess, id, tok)
		var se *tunnel.StatusError
		if !errors.As(err, &se) || se.Code != tunnel.StatusDenied {
			t.Fatalf("%s: %v, want status denied", what, err)
		}
		return se.Message
	}
	b1 := dialRaw(t, g, alice)
	wrong := token
	wrong[0] ^= 1
	m1 := refused("alice, wrong token", b1, 42, wrong)
	m2 := refused("alice, unknown id", b1, 4242, token)
	m3 := refused("bob, right id and token", dialRaw(t, g, bob), 42, token)
	if m1 != m2 || m2 != m3 {
		t.Fatalf("refusals differ (they must not tell whether the id exists): %q, %q, %q", m1, m2, m3)
	}
	// The opening key with the token resumes it: the gateway had received
	// the 6 bytes of PING.
	if recv, err := resumeStatus(t, b1, 42, token); err != nil || recv != 6 {
		t.Fatalf("resume by its key: recv %d, %v; want 6", recv, err)
	}

	// A held stream of a key the reload removes ends at once.
	c := dialRaw(t, g, bob)
	st2, err := c.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "cache", Node: r.Addr, Resumable: true, ID: 7, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st2.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = st2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(st2, b); err != nil {
		t.Fatal(err)
	}
	before := r.ConnectedClients(t)
	c.Close()
	waitFor(t, 10*time.Second, "bob's stream held", func() bool {
		return strings.Count(g.Log.String(), "resumable streams held for a resume") >= 2
	})
	if err := os.WriteFile(g.Config.AuthorizedKeys, []byte(alice.Line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.Srv.ReloadKeys(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "bob's held stream closed by the reload", func() bool {
		return strings.Contains(g.Log.String(), "held stream closed: its key is no longer authorized")
	})
	waitFor(t, 10*time.Second, "redis to drop bob's upstream connection", func() bool { return r.ConnectedClients(t) == before-1 })
}

// TestResume_StreamLimit: resumable streams count against
// max_streams_per_session (4 here) while attached, as plain ones do,
// although their relays run outside the session.
func TestResume_StreamLimit(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "alice")
	g := startGateway(t, redisTarget(r), []string{k.Line}, func(c *server.Config) { c.Limits.MaxStreamsPerSession = 4 })
	sess := dialRaw(t, g, k)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 1; i <= 5; i++ {
		st, err := sess.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "cache", Node: r.Addr,
			Resumable: true, ID: uint64(i), Token: tunnel.ResumeToken{byte(i)}})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Abort()
		if _, err := st.Write([]byte("PING\r\n")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 7)
		_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadFull(st, b)
		var se *tunnel.StatusError
		switch {
		case i <= 4 && (err != nil || string(b) != "+PONG\r\n"):
			t.Fatalf("stream %d: %q, %v", i, b, err)
		case i == 5 && (!errors.As(err, &se) || se.Code != tunnel.StatusLimit):
			t.Fatalf("stream 5 of a session limited to 4: %v, want status limit", err)
		}
	}
}
