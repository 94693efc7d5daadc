package test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/certs"
	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/tunnel"
)

// Issue 10, findings 2, 4 and 7 (part): what a client that never
// authenticates can make a real gateway process hold, and whether it can
// keep others out. Every bound is stated as a number here and in
// SECURITY.md.

const (
	// preAuthRSSBound is the most the gateway's RSS may grow while one
	// unauthenticated client floods it (finding 2: 184 MB -> 800 MB).
	preAuthRSSBound = 32 << 20
	// legitAuthBound is how long a client from another source may take
	// to authenticate during a flood (finding 4).
	legitAuthBound = 2 * time.Second
	// unauthPerSource is limits.unauthenticated_per_source in these tests.
	unauthPerSource = 8
)

// preAuthGateway starts a gateway process with short pre-auth limits and a
// tcp target (no cache is needed: nothing here gets past authentication
// except the legitimate client, which opens no stream).
func preAuthGateway(t *testing.T, authorized []string, limits map[string]string) *gatewayProc {
	t.Helper()
	l := map[string]string{
		"auth_timeout":               "3s",
		"handshake_timeout":          "3s",
		"unauthenticated_per_source": fmt.Sprint(unauthPerSource),
	}
	for k, v := range limits {
		l[k] = v
	}
	return startGatewayProc(t, gatewayProcOpts{
		Targets:    map[string]string{"cache": `{type: tcp, nodes: ["127.0.0.1:9"]}`},
		Limits:     l,
		Authorized: authorized,
	})
}

// attackerSession opens a QUIC or TLS session from local (an IP address)
// that completes the transport handshake and nothing more.
func attackerSession(ctx context.Context, g *gatewayProc, transport, local string) (tunnel.Session, error) {
	conf := certs.ClientTLSConfig(func(ssh.PublicKey) error { return nil })
	if transport == "quic" {
		qc := tunnel.DefaultQUICConfig()
		qc.LocalAddr = local
		return tunnel.DialQUIC(ctx, g.Addr, conf, qc)
	}
	tc := tunnel.DefaultTLSConfig()
	tc.LocalAddr = local
	return tunnel.DialTLS(ctx, g.Addr, conf, tc)
}

// legitDial authenticates k from the source address local over transport
// and returns how long it took, from the first packet to the Welcome.
func legitDial(t *testing.T, g *gatewayProc, transport, local string, k key) (time.Duration, error) {
	t.Helper()
	logger, _ := newTestLogger(t)
	zero := 0
	cl, err := client.New(client.Options{
		Profile: "cache", Servers: []string{g.ServerAddr(transport)}, Target: "cache", Transport: transport,
		Identity: k.Path, LocalPort: &zero, KnownHosts: g.KnownHosts(t), Logger: logger,
		DialTimeout: 10 * time.Second, LocalAddr: local,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	start := time.Now()
	s, w, err := cl.Dial(ctx)
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	defer s.Close()
	if !w.OK {
		return took, fmt.Errorf("welcome not ok: %+v", w)
	}
	return took, nil
}

// checkLegit asserts that a client from 127.0.0.3 authenticates within
// legitAuthBound on every transport.
func checkLegit(t *testing.T, g *gatewayProc, k key, during string) {
	t.Helper()
	for _, tr := range []string{"quic", "tls", "ssh"} {
		took, err := legitDial(t, g, tr, "127.0.0.3", k)
		if err != nil {
			t.Fatalf("%s: legitimate client from 127.0.0.3 over %s: %v", during, tr, err)
		}
		t.Logf("%s: legitimate client from 127.0.0.3 authenticated over %s in %s (bound %s)", during, tr, took.Round(time.Millisecond), legitAuthBound)
		if took > legitAuthBound {
			t.Errorf("%s: legitimate client over %s took %s to authenticate, bound %s", during, tr, took, legitAuthBound)
		}
	}
}

// TestPreAuth_StreamFlood (finding 2): a client with no key completes the
// handshake, opens the control stream, never sends Hello, opens 1000 more
// streams and writes 256 KiB on each. The gateway's RSS grows by at most
// 32 MiB (it grew by 616 MB before: yamux buffered every stream). On TLS
// the gateway stops reading at the first frame of the second stream; on
// QUIC every such stream is reset on arrival.
func TestPreAuth_StreamFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("floods a gateway process")
	}
	k := newKey(t, "legit")
	g := preAuthGateway(t, []string{k.Line}, map[string]string{"auth_timeout": "20s"})
	for _, tr := range []string{"tls", "quic"} {
		t.Run(tr, func(t *testing.T) {
			before := g.RSS(t)
			g.ResetPeakRSS(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s, err := attackerSession(ctx, g, tr, "")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindControl, Target: "cache"}); err != nil {
				t.Fatal(err)
			}
			const streams, each = 1000, 256 << 10
			payload := bytes.Repeat([]byte("x"), each)
			var (
				wg      sync.WaitGroup
				mu      sync.Mutex
				written int64
			)
			deadline := time.Now().Add(8 * time.Second)
			opened := 0
			for i := range streams {
				octx, ocancel := context.WithTimeout(ctx, 2*time.Second)
				st, err := s.OpenStream(octx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "cache", Node: "127.0.0.1:9"})
				ocancel()
				if err != nil {
					// TLS: the gateway stopped reading, the socket buffers
					// are full, and the client cannot even send more.
					t.Logf("stream %d: open: %v", i, err)
					break
				}
				opened++
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer st.Abort()
					_ = st.SetWriteDeadline(deadline)
					n, _ := st.Write(payload)
					mu.Lock()
					written += int64(n)
					mu.Unlock()
				}()
			}
			// The flood is under way (on tls its writers are blocked):
			// others still get in.
			checkLegit(t, g, k, tr+" stream flood")
			wg.Wait()
			// Whatever the gateway was going to buffer, it has by now.
			time.Sleep(time.Second)
			// The peak, not a sample: by now the writers have aborted
			// their streams, and what the gateway held for them may be
			// free again.
			assertPreAuthGrowth(t, g, before, fmt.Sprintf("%s: %d of %d streams x 256 KiB opened before auth; client wrote %d KiB",
				tr, opened, streams, written>>10))
		})
	}
}

// TestPreAuth_QUICHeldStreams: on QUIC the gateway holds one stream
// behind the control stream before authentication (the first
// connection's stream right behind the Hello, client/early.go), reading at
// most tunnel.MaxEarlyBytes (64 KiB) of it into a buffer of its own.
// Clients with no key fill every unauthenticated slot of their source (8)
// with a session that writes 1 MiB (its stream window) on that stream and
// never sends a Hello: once in one write, once in 130-byte writes (quic-go
// would keep each such frame, unread, in a 1452-byte buffer: +113 MiB
// when the gateway did not read the held stream). The gateway's RSS grows
// by at most 32 MiB, every held stream is refused (the client reads the
// refusal) within tunnel.EarlyHold (3 s) + 2 s, and a client from another
// source authenticates meanwhile within 2 s.
func TestPreAuth_QUICHeldStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a gateway process's unauthenticated slots")
	}
	k := newKey(t, "legit")
	g := preAuthGateway(t, []string{k.Line}, map[string]string{"auth_timeout": "20s"})
	for _, chunk := range []int{1 << 20, 130} {
		t.Run(fmt.Sprintf("writes of %d bytes", chunk), func(t *testing.T) {
			before := g.RSS(t)
			g.ResetPeakRSS(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			window := make([]byte, 1<<20) // tunnel.DefaultQUICConfig's InitialStreamReceiveWindow
			type held struct {
				took    time.Duration
				written int
				err     error
			}
			results := make(chan held, unauthPerSource)
			for i := range unauthPerSource {
				s, err := attackerSession(ctx, g, "quic", "127.0.0.2")
				if err != nil {
					t.Fatalf("session %d: %v", i, err)
				}
				defer s.Close()
				if _, err := s.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindControl, Target: "cache"}); err != nil {
					t.Fatal(err)
				}
				st, err := s.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "cache", Node: "127.0.0.1:9"})
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				go func() {
					defer st.Abort()
					_ = st.SetDeadline(start.Add(tunnel.EarlyHold + 5*time.Second))
					written := 0
					for written < len(window) {
						n, err := st.Write(window[written:min(written+chunk, len(window))])
						written += n
						if err != nil {
							break
						}
						if chunk < 1<<10 {
							time.Sleep(20 * time.Microsecond) // one frame per packet, not coalesced
						}
					}
					_, err := st.Read(make([]byte, 1))
					results <- held{time.Since(start), written, err}
				}()
			}
			checkLegit(t, g, k, "held streams on every slot of a source")
			for range unauthPerSource {
				r := <-results
				if !tunnel.HeldStreamDropped(r.err) {
					t.Fatalf("a held stream read %v after %v, want the gateway's refusal", r.err, r.took)
				}
				if r.took > tunnel.EarlyHold+2*time.Second {
					t.Errorf("a held stream was refused after %v, bound %v + 2 s", r.took, tunnel.EarlyHold)
				}
			}
			assertPreAuthGrowth(t, g, before, fmt.Sprintf("%d sessions each writing 1 MiB on a held stream in %d-byte writes", unauthPerSource, chunk))
		})
	}
}

// TestPreAuth_QUICRefusalLinger: a refused QUIC session is given up to
// 2 s to read its refusal before the gateway closes it. Clients with no
// key fill every unauthenticated slot of their source (8) with a session
// whose Hello is refused at once (its key does not parse) and that then
// writes 1 MiB more on the control stream in 130-byte writes. The gateway
// reads and discards at most 64 KiB of that and then closes the session,
// so quic-go never holds the rest (unread, it would keep each such frame
// in a 1452-byte buffer). Its RSS grows by at most 32 MiB.
func TestPreAuth_QUICRefusalLinger(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a gateway process's unauthenticated slots")
	}
	k := newKey(t, "legit")
	g := preAuthGateway(t, []string{k.Line}, nil)
	before := g.RSS(t)
	g.ResetPeakRSS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range unauthPerSource {
		s, err := attackerSession(ctx, g, "quic", "127.0.0.2")
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		defer s.Close()
		ctrl, err := s.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindControl, Target: "cache"})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = ctrl.SetDeadline(time.Now().Add(5 * time.Second))
			// A Hello whose key does not parse: a final refusal.
			if err := control.WriteFrame(ctrl, control.FrameHello, []byte(`{"target":"cache","public_key":"eA=="}`)); err != nil {
				return
			}
			piece := make([]byte, 130)
			for range (1 << 20) / len(piece) {
				if _, err := ctrl.Write(piece); err != nil {
					return
				}
				time.Sleep(20 * time.Microsecond) // one frame per packet, not coalesced
			}
		}()
	}
	wg.Wait()
	time.Sleep(500 * time.Millisecond) // within the gateway's 2 s linger
	assertPreAuthGrowth(t, g, before, fmt.Sprintf("%d refused sessions each writing 1 MiB more in 130-byte writes", unauthPerSource))
}

// assertPreAuthGrowth logs what grew the gateway's peak RSS since before
// (what) and fails beyond preAuthRSSBound.
func assertPreAuthGrowth(t *testing.T, g *gatewayProc, before int64, what string) {
	t.Helper()
	after := g.PeakRSS(t)
	growth := after - before
	t.Logf("%s: gateway RSS %d KiB -> peak %d KiB (growth %+.1f MiB, bound %d MiB)",
		what, before>>10, after>>10, float64(growth)/(1<<20), preAuthRSSBound>>20)
	if growth > preAuthRSSBound {
		t.Fatalf("gateway RSS grew by %d MiB before authentication, bound %d MiB", growth>>20, preAuthRSSBound>>20)
	}
}

// TestPreAuth_LockOut (finding 4): idle TCP connections and sessions that
// never send Hello, all from 127.0.0.2, are capped at
// unauthenticated_per_source (8) and refused at once beyond it; a client
// from 127.0.0.3 authenticates within 2 s on quic, tls and ssh during
// each flood.
func TestPreAuth_LockOut(t *testing.T) {
	if testing.Short() {
		t.Skip("floods a gateway process")
	}
	k := newKey(t, "legit")
	g := preAuthGateway(t, []string{k.Line}, map[string]string{"auth_failures_per_minute": "1000000"})

	t.Run("idle_tcp", func(t *testing.T) {
		// 256 idle TCP connections (no byte sent) to the TLS port and 256
		// to the SSH port.
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 2 * time.Second}
		for _, addr := range []string{g.Addr, g.SSHAddr} {
			for range 256 {
				c, err := d.Dial("tcp", addr)
				if err != nil {
					t.Fatalf("dial %s: %v", addr, err)
				}
				conns = append(conns, c)
			}
		}
		open := stillOpen(t, conns, time.Second)
		t.Logf("512 idle TCP connections from 127.0.0.2: %d left open by the gateway (cap %d per source)", open, unauthPerSource)
		if open > unauthPerSource {
			t.Fatalf("%d idle connections from one source held open, cap %d", open, unauthPerSource)
		}
		checkLegit(t, g, k, "512 idle TCP connections")
	})

	for _, tr := range []string{"tls", "quic"} {
		t.Run(tr+"_sessions_without_hello", func(t *testing.T) {
			// 1030 sessions (more than max_sessions, 1024) that never send
			// Hello. Beyond the cap they are refused at once, so the loop
			// is quick; the admitted ones wait for auth_timeout.
			n := 1030
			if tr == "quic" {
				n = 64 // each refused QUIC attempt costs the dialer a handshake timeout
			}
			var (
				sessions []tunnel.Session
				refused  int
			)
			defer func() {
				for _, s := range sessions {
					s.Close()
				}
			}()
			for range n {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				s, err := attackerSession(ctx, g, tr, "127.0.0.2")
				cancel()
				if err != nil {
					refused++
					continue
				}
				sessions = append(sessions, s)
			}
			alive := 0
			for _, s := range sessions {
				select {
				case <-s.Done():
				case <-time.After(10 * time.Millisecond):
					alive++
				}
			}
			t.Logf("%d %s sessions without Hello from 127.0.0.2: %d refused, %d alive (cap %d per source)", n, tr, refused, alive, unauthPerSource)
			if alive > unauthPerSource {
				t.Fatalf("%d sessions without Hello alive from one source, cap %d", alive, unauthPerSource)
			}
			checkLegit(t, g, k, fmt.Sprintf("%d %s sessions without Hello", n, tr))
		})
	}
}

// stillOpen counts the connections that the peer has not closed within
// wait (a read that times out means open).
func stillOpen(t *testing.T, conns []net.Conn, wait time.Duration) int {
	t.Helper()
	var (
		mu   sync.Mutex
		open int
		wg   sync.WaitGroup
	)
	deadline := time.Now().Add(wait)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(deadline)
			_, err := c.Read(make([]byte, 1))
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				mu.Lock()
				open++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return open
}

// TestPreAuth_EOFsAndTimeoutsCount (finding 4): handshakes abandoned,
// sessions closed before Hello and sessions that let auth_timeout run out
// count against auth_failures_per_minute (3 here). The next attempt is
// refused on every transport with the reason and the time to wait, and
// the real client binary prints it and exits 1.
func TestPreAuth_EOFsAndTimeoutsCount(t *testing.T) {
	k := newKey(t, "legit")
	metrics := freeTCPUDPPort(t)
	g := startGatewayProc(t, gatewayProcOpts{
		Targets:    map[string]string{"cache": `{type: tcp, nodes: ["127.0.0.1:9"]}`},
		Limits:     map[string]string{"auth_timeout": "2s", "handshake_timeout": "2s", "auth_failures_per_minute": "3"},
		Authorized: []string{k.Line},
		Extra:      fmt.Sprintf("metrics: %q\n", metrics),
	})
	// 1: a TCP connection closed during the TLS handshake (EOF).
	c, err := net.Dial("tcp", g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	// 2: a TLS session closed before its control stream (EOF before Hello).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := attackerSession(ctx, g, "tls", "")
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	// 3: a QUIC session with a control stream and no Hello until
	// auth_timeout (2 s) ends it (a timeout).
	q, err := attackerSession(ctx, g, "quic", "")
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := q.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindControl, Target: "cache"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "3 pre-auth failures counted", func() bool {
		return authFailureCount(t, metrics, "handshake")+authFailureCount(t, metrics, "no_hello") >= 3
	})

	msg := regexp.MustCompile(`too many failed authentications from 127\.0\.0\.1: retry in [0-9]+ s`)
	for _, tr := range []string{"quic", "tls", "ssh"} {
		cmd := exec.Command(cachetunBinary(t), "connect", "cache", "--server", g.ServerAddr(tr), "--transport", tr,
			"-i", k.Path, "--known-hosts", g.KnownHosts(t), "--local-port", "0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case err = <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("%s: a rate-limited client did not exit within 20 s: %s", tr, stderr.String())
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("%s: rate-limited client exit: %v, want exit status 1", tr, err)
		}
		// Told it is the address, not the key: on ssh too, where the
		// reason comes as a banner.
		if !strings.Contains(stderr.String(), "gateway refused this address for now: too many failed") || strings.Contains(stderr.String(), "pass -i with another key") {
			t.Errorf("%s: the client does not say the address is refused for now (or sends the user to another key):\n%s", tr, stderr.String())
		}
		if !msg.Match(stderr.Bytes()) {
			t.Errorf("%s: client output does not say why and when to retry:\n%s", tr, stderr.String())
		} else {
			t.Logf("%s: client printed %q", tr, msg.Find(stderr.Bytes()))
		}
	}
}

// authFailureCount scrapes cachetun_auth_failures_total{reason=...}.
func authFailureCount(t *testing.T, metricsAddr, reason string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", metricsAddr, 2*time.Second)
	if err != nil {
		return 0
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	prefix := fmt.Sprintf(`cachetun_auth_failures_total{reason=%q}`, reason)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			var v float64
			fmt.Sscan(strings.TrimSpace(rest), &v)
			n += int(v)
		}
	}
	return n
}

// TestPreAuth_NoDisclosure (finding 7): the SSH identification string
// carries no version, an unknown key is not told the server's file paths
// (nor its version), and a control frame declaring 1 MiB before
// authentication ends the session (the limit is 64 KiB, checked before
// allocating).
func TestPreAuth_NoDisclosure(t *testing.T) {
	k := newKey(t, "legit")
	stranger := newKey(t, "stranger")
	g := preAuthGateway(t, []string{k.Line}, nil)

	c, err := net.DialTimeout("tcp", g.SSHAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || line != "SSH-2.0-cachetun\r\n" {
		t.Fatalf("SSH identification: %q %v, want \"SSH-2.0-cachetun\\r\\n\"", line, err)
	}

	for _, tr := range []string{"quic", "tls"} {
		_, err := legitDial(t, g, tr, "", stranger)
		var ce *control.Error
		if !errors.As(err, &ce) {
			t.Fatalf("%s: unknown key: %v", tr, err)
		}
		text := ce.Error() + " " + ce.Hint
		if strings.Contains(text, g.Dir) || strings.Contains(text, g.AuthorizedKeysPath) {
			t.Fatalf("%s: an unknown client is told the server's paths: %s", tr, text)
		}
		if !strings.Contains(text, "gateway's authorized_keys") {
			t.Fatalf("%s: the hint no longer says what to do: %s", tr, text)
		}
		t.Logf("%s: unknown key told: %s", tr, text)
	}

	for _, tr := range []string{"quic", "tls"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := attackerSession(ctx, g, tr, "")
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		ctrl, err := s.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindControl, Target: "cache"})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		_, _ = ctrl.Write([]byte{byte(control.FrameHello), 0, 0x10, 0, 0}) // 1 MiB, no body
		// Well inside auth_timeout (3 s), so that the timeout cannot
		// pass for the size check.
		const frameBound = 1500 * time.Millisecond
		_ = ctrl.SetReadDeadline(time.Now().Add(frameBound))
		start := time.Now()
		_, err = io.ReadAll(ctrl)
		took := time.Since(start)
		s.Close()
		cancel()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s: a 1 MiB frame header before auth was not refused within %s (auth_timeout 3 s)", tr, frameBound)
		}
		t.Logf("%s: 1 MiB frame header refused after %s", tr, took.Round(time.Millisecond))
	}
	g.WaitLog(t, "control frame too large", 5*time.Second)
}
