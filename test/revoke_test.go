package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/certs"
	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/test/testenv"
	"github.com/cachetun/cachetun/tunnel"
)

// revokeBound is what issue 10 allows between a revocation (SIGHUP, an
// expiry instant) and the end of the live session and its streams.
const revokeBound = 2 * time.Second

// connectProc is a real `cachetun connect` process.
type connectProc struct {
	cmd    *exec.Cmd
	stderr *syncBuf
	local  string // the local address of the target's first node
	exited chan struct{}
	code   int
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startConnectProc runs the built binary as `cachetun connect TARGET
// --server ... --transport ...` and waits for its listener table.
func startConnectProc(t testing.TB, g gatewayEndpoint, transport, target string, k key) *connectProc {
	t.Helper()
	cmd := exec.Command(cachetunBinary(t), "connect", target, "--server", g.ServerAddr(transport),
		"--transport", transport, "-i", k.Path, "--known-hosts", g.KnownHosts(t), "--local-port", "0")
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "SSH_AUTH_SOCK=", "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProc{cmd: cmd, stderr: &syncBuf{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	local := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) >= 3 && f[1] == "->" {
				select {
				case local <- f[0]:
				default:
				}
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case p.local = <-local:
	case <-p.exited:
		t.Fatalf("cachetun connect exited with %d before its ports were up: %s", p.code, p.stderr)
	case <-time.After(20 * time.Second):
		t.Fatalf("cachetun connect not up within 20s: %s", p.stderr)
	}
	return p
}

// redisPing sends PING on c (a local connection or a proxied stream) and
// waits at most 5 s for +PONG.
func redisPing(c interface {
	io.ReadWriter
	SetDeadline(time.Time) error
}) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "+PONG\r\n" {
		return fmt.Errorf("got %q", buf)
	}
	return nil
}

// waitClosed waits up to bound for c to be closed by the far end and
// returns how long that took.
func waitClosed(t testing.TB, c net.Conn, start time.Time, bound time.Duration) time.Duration {
	t.Helper()
	_ = c.SetReadDeadline(start.Add(bound + 500*time.Millisecond))
	_, err := io.Copy(io.Discard, c)
	took := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("proxied connection still open %s after the revocation (bound %s)", took.Round(time.Millisecond), bound)
	}
	return took
}

// TestRevocation_SIGHUP (issue 10, finding 3): a live session of the real
// `cachetun connect` through a real gateway process, with a proxied
// connection open, ends within 2 s of its key line being removed and
// SIGHUP; the client prints "access revoked by the gateway" and exits 1
// without retrying. On quic, tls and ssh (the cachetun client's SSH
// transport, which has the control channel).
func TestRevocation_SIGHUP(t *testing.T) {
	r := testenv.StartRedis(t)
	forEachTransport(t, func(t *testing.T, transport string) {
		k, other := newKey(t, "alice"), newKey(t, "bob")
		g := startGatewayProc(t, gatewayProcOpts{
			Targets:    map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", r.Addr)},
			Authorized: []string{k.Line, other.Line},
		})
		p := startConnectProc(t, g, transport, "cache", k)
		c, err := net.Dial("tcp", p.local)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := redisPing(c); err != nil {
			t.Fatalf("PING before the revocation: %v", err)
		}
		g.WriteAuthorizedKeys(t, []string{other.Line})
		start := time.Now()
		g.Reload(t)
		took := waitClosed(t, c, start, revokeBound)
		select {
		case <-p.exited:
		case <-time.After(time.Until(start.Add(revokeBound)) + 500*time.Millisecond):
			t.Fatalf("cachetun connect still running %s after the revocation: %s", time.Since(start).Round(time.Millisecond), p.stderr)
		}
		exitAfter := time.Since(start)
		if exitAfter > revokeBound || took > revokeBound {
			t.Fatalf("session ended %s and connection %s after SIGHUP, bound %s", exitAfter, took, revokeBound)
		}
		if p.code != 1 {
			t.Fatalf("exit code %d, want 1; stderr: %s", p.code, p.stderr)
		}
		if !strings.Contains(p.stderr.String(), "cachetun: error: access revoked by the gateway: key "+k.Fingerprint()) {
			t.Fatalf("stderr does not give the revocation: %s", p.stderr)
		}
		if e := p.stderr.String(); strings.Contains(e, "session to gateway lost") || strings.Contains(e, "reconnect failed") {
			t.Fatalf("the client tried to reconnect after a revocation: %s", p.stderr)
		}
		if strings.Contains(p.stderr.String(), g.AuthorizedKeysPath) {
			t.Fatalf("the client was told the gateway's file path: %s", p.stderr)
		}
		t.Logf("%s: proxied connection closed %s, client exited 1 %s after SIGHUP (bound %s)",
			transport, took.Round(time.Millisecond), exitAfter.Round(time.Millisecond), revokeBound)
		// bob's session is unaffected: a new one still works.
		mustConnect(t, g, transport, "cache", other)
	})
}

// Fingerprint returns the key's SHA256 fingerprint.
func (k key) Fingerprint() string { return ssh.FingerprintSHA256(k.Pub) }

// TestRevocation_Expiry (issue 10, finding 3): a key whose expiry-time
// passes, and a user certificate whose ValidBefore passes, end their live
// session within 2 s of that instant, through a real gateway process; the
// client's Run returns client.ErrRevoked.
func TestRevocation_Expiry(t *testing.T) {
	r := testenv.StartRedis(t)
	const lifetime = 4 * time.Second // from now to the instant the access ends
	forEachTransport(t, func(t *testing.T, transport string) {
		for _, kind := range []string{"expiry-time", "certificate"} {
			t.Run(kind, func(t *testing.T) {
				end := time.Now().Add(lifetime).Truncate(time.Second).Add(time.Second)
				var k key
				var line string
				switch kind {
				case "expiry-time":
					k = newKey(t, "temp")
					line = fmt.Sprintf("expiry-time=%q %s", end.UTC().Format("20060102150405"), k.Line)
				case "certificate":
					ca := newKey(t, "ca")
					k = newCertKey(t, ca, "cache", end)
					line = "cert-authority " + ca.Line
				}
				g := startGatewayProc(t, gatewayProcOpts{
					Targets:    map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", r.Addr)},
					Authorized: []string{line},
				})
				cl := mustConnect(t, g, transport, "cache", k)
				c, err := net.Dial("tcp", cl.Local(t, r.Addr))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if err := redisPing(c); err != nil {
					t.Fatalf("PING before expiry: %v", err)
				}
				var runErr error
				select {
				case runErr = <-cl.Err:
				case <-time.After(time.Until(end) + revokeBound + time.Second):
					t.Fatalf("session still up %s after the access ended", time.Since(end).Round(time.Millisecond))
				}
				ended := time.Since(end)
				if ended > revokeBound || ended < -500*time.Millisecond {
					t.Fatalf("session ended %s after the expiry instant, want within [0, %s]", ended, revokeBound)
				}
				if !errors.Is(runErr, client.ErrRevoked) || !strings.Contains(runErr.Error(), "expired") {
					t.Fatalf("Run returned %v, want ErrRevoked saying it expired", runErr)
				}
				took := waitClosed(t, c, end, revokeBound)
				t.Logf("%s %s: session ended %s, proxied connection %s after the instant (bound %s): %s",
					transport, kind, ended.Round(time.Millisecond), took.Round(time.Millisecond), revokeBound, errText(runErr))
				cl.Err <- runErr // for the cleanup
			})
		}
	})
}

// newCertKey makes a key with a user certificate signed by ca for the
// principal, valid from a minute ago until validBefore, with
// permit-port-forwarding, next to it as PATH-cert.pub.
func newCertKey(t testing.TB, ca key, principal string, validBefore time.Time) key {
	t.Helper()
	k := newKey(t, "cert-user")
	caSigner := loadTestSigner(t, ca.Path)
	cert := &ssh.Certificate{
		Key: k.Pub, Serial: 7, CertType: ssh.UserCert, KeyId: "short-lived",
		ValidPrincipals: []string{principal},
		ValidAfter:      uint64(time.Now().Add(-time.Minute).Unix()),
		ValidBefore:     uint64(validBefore.Unix()),
		Permissions:     ssh.Permissions{Extensions: map[string]string{"permit-port-forwarding": ""}},
	}
	if err := cert.SignCert(rand.Reader, caSigner); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k.Path+"-cert.pub", ssh.MarshalAuthorizedKey(cert), 0o600); err != nil {
		t.Fatal(err)
	}
	return k
}

func loadTestSigner(t testing.TB, path string) ssh.Signer {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRevocation_NarrowTargets (issue 10, finding 3): one session with a
// stream to each of two targets; the key's line is narrowed to one target
// on reload. The stream to the other ends within 2 s, the allowed one
// keeps working, and new streams to the removed target are denied.
func TestRevocation_NarrowTargets(t *testing.T) {
	ra, rb := testenv.StartRedis(t), testenv.StartRedis(t)
	forEachTransport(t, func(t *testing.T, transport string) {
		k := newKey(t, "narrow")
		g := startGatewayProc(t, gatewayProcOpts{
			Targets: map[string]string{
				"a": fmt.Sprintf("{type: redis, nodes: [%q]}", ra.Addr),
				"b": fmt.Sprintf("{type: redis, nodes: [%q]}", rb.Addr),
			},
			Authorized: []string{`targets="a,b" ` + k.Line},
		})
		cl, err := client.New(client.Options{
			Servers: []string{g.ServerAddr(transport)}, Target: "a", Transport: transport,
			Identity: k.Path, KnownHosts: g.KnownHosts(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		sess, _, err := cl.Dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		open := func(target, node string) tunnel.Stream {
			t.Helper()
			st, err := sess.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: target, Node: node})
			if err != nil {
				t.Fatal(err)
			}
			return st
		}
		sa, sb := open("a", ra.Addr), open("b", rb.Addr)
		defer sa.Close()
		defer sb.Close()
		for name, st := range map[string]tunnel.Stream{"a": sa, "b": sb} {
			if err := redisPing(st); err != nil {
				t.Fatalf("PING on target %s: %v", name, err)
			}
		}
		g.WriteAuthorizedKeys(t, []string{`targets="a" ` + k.Line})
		start := time.Now()
		g.Reload(t)
		_ = sb.SetReadDeadline(start.Add(revokeBound + 500*time.Millisecond))
		_, err = io.Copy(io.Discard, sb)
		took := time.Since(start)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || took > revokeBound {
			t.Fatalf("stream to the removed target still open %s after SIGHUP (bound %s): %v", took, revokeBound, err)
		}
		if err := redisPing(sa); err != nil {
			t.Fatalf("stream to the allowed target broke: %v", err)
		}
		sb2 := open("b", rb.Addr)
		defer sb2.Close()
		_, _ = sb2.Write([]byte("PING\r\n"))
		_ = sb2.SetReadDeadline(time.Now().Add(5 * time.Second))
		var se *tunnel.StatusError
		if _, err := sb2.Read(make([]byte, 1)); !errors.As(err, &se) || se.Code != tunnel.StatusDenied {
			t.Fatalf("new stream to the removed target: %v, want denied", err)
		}
		select {
		case <-sess.Done():
			t.Fatal("the session ended, but its own target is still allowed")
		default:
		}
		t.Logf("%s: stream to the removed target ended %s after SIGHUP (bound %s); the allowed one works", transport, took.Round(time.Millisecond), revokeBound)

		// Now the session's own target goes: the session ends.
		g.WriteAuthorizedKeys(t, []string{`targets="b" ` + k.Line})
		start = time.Now()
		g.Reload(t)
		select {
		case <-sess.Done():
		case <-time.After(time.Until(start.Add(revokeBound))):
			t.Fatalf("session still up %s after its own target was taken away", time.Since(start).Round(time.Millisecond))
		}
		g.WaitLog(t, "code=target_denied", 5*time.Second)
		t.Logf("%s: session ended %s after its own target was taken away (bound %s)", transport, time.Since(start).Round(time.Millisecond), revokeBound)
	})
}

// TestStreams_RefusedFloodBounded (issue 10, finding 5): an authenticated
// client of a real gateway process with max_streams_per_session: 10 opens
// 300 streams to a node that is not part of the target, writes 256 KiB
// on each and never closes them. The gateway's RSS grows by at most
// 32 MiB. On tls (yamux, no stream reset) refused streams count until they
// are gone: after 10 refused as unknown node, the next 10 are refused with
// the limit status, and a client that holds 2 × 10 refused streams open
// loses its session. On quic the transport's stream limit (10) holds: a
// refused stream is freed at once (STOP_SENDING), so its credit comes back
// and every open gets its refusal. On ssh a refusal is a channel-open
// failure, which holds nothing. A legitimate client from 127.0.0.3
// authenticates within 2 s on every transport during the flood, and one
// connects within 2 s afterwards.
func TestStreams_RefusedFloodBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("floods a gateway process")
	}
	const (
		limit     = 10
		opens     = 300
		perStream = 256 << 10
		maxGrowth = 32 << 20
		unknown   = "10.255.255.1:6379" // not a node of the target; never dialled
	)
	r := testenv.StartRedis(t)
	forEachTransport(t, func(t *testing.T, transport string) {
		legit := newKey(t, "legit")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		g, sess := floodSession(ctx, t, r.Addr, transport, limit, legit)
		base := g.RSS(t)
		g.ResetPeakRSS(t)
		payload := bytes.Repeat([]byte("x"), perStream)
		var (
			peak    = base
			counts  = map[string]int{}
			streams []tunnel.Stream
		)
		for i := 0; i < opens; i++ {
			octx, ocancel := context.WithTimeout(ctx, 5*time.Second)
			st, err := sess.OpenStream(octx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "cache", Node: unknown})
			ocancel()
			if err != nil {
				counts["open failed"]++
				break
			}
			streams = append(streams, st) // never closed until the end
			_ = st.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = st.Write(payload)
			_, err = st.Read(make([]byte, 1))
			var se *tunnel.StatusError
			switch {
			case errors.As(err, &se):
				counts[se.Code.String()]++
			default:
				counts["session closed"]++
				t.Logf("stream %d: %v", i, err)
			}
			if rss := g.RSS(t); rss > peak {
				peak = rss
			}
			if counts["session closed"] > 0 {
				break
			}
		}
		time.Sleep(200 * time.Millisecond) // let the gateway take in what is in flight
		if rss := g.PeakRSS(t); rss > peak {
			peak = rss // VmHWM: also a moment between two samples
		}
		growth := peak - base
		t.Logf("%s: %d opens, refusals %v; gateway RSS %d MiB -> peak %d MiB (growth %.1f MiB, bound %d MiB)",
			transport, len(streams), counts, base>>20, peak>>20, float64(growth)/(1<<20), maxGrowth>>20)
		if growth > maxGrowth {
			t.Errorf("gateway RSS grew by %d bytes, bound %d", growth, maxGrowth)
		}
		switch transport {
		case "tls":
			if counts["unknown node"] != limit || counts["limit reached"] != limit || counts["session closed"]+counts["open failed"] != 1 {
				t.Errorf("refusals %v: want %d unknown node, %d limit, then the session closed", counts, limit, limit)
			}
		default:
			if counts["unknown node"] != opens {
				t.Errorf("refusals %v: want all %d refused as unknown node", counts, opens)
			}
		}
		// While the flood's streams are still held, a client from another
		// address gets in on every transport.
		checkLegit(t, g, legit, transport+" refused-stream flood")
		for _, st := range streams {
			st.Close()
		}
		start := time.Now()
		mustConnect(t, g, transport, "cache", legit)
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("a legitimate client took %s to connect after the flood, bound 2s", took)
		}
	})
}

// TestSession_OneControlStream (issue 10, finding 7): a session has
// exactly one control stream on every transport. On quic and tls a second
// kind-control stream of an authenticated session is refused; on ssh, of
// 9 control channels opened at once on one connection exactly one is
// accepted and welcomed, against a real gateway process.
func TestSession_OneControlStream(t *testing.T) {
	r := testenv.StartRedis(t)
	const channels = 9
	forEachTransport(t, func(t *testing.T, transport string) {
		k := newKey(t, "ctl")
		g := startGatewayProc(t, gatewayProcOpts{
			Targets:    map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", r.Addr)},
			Authorized: []string{k.Line},
		})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var sess tunnel.Session
		if transport == "ssh" {
			signer := loadTestSigner(t, k.Path)
			var err error
			sess, err = tunnel.DialSSH(ctx, g.SSHAddr, &ssh.ClientConfig{
				User: "cache", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
				HostKeyCallback: ssh.FixedHostKey(g.HostKey),
			}, tunnel.DefaultSSHConfig())
			if err != nil {
				t.Fatal(err)
			}
		} else {
			cl, err := client.New(client.Options{
				Servers: []string{g.ServerAddr(transport)}, Target: "cache", Transport: transport,
				Identity: k.Path, KnownHosts: g.KnownHosts(t),
			})
			if err != nil {
				t.Fatal(err)
			}
			sess, _, err = cl.Dial(ctx) // the first control stream, authenticated
			if err != nil {
				t.Fatal(err)
			}
		}
		defer sess.Close()
		n := channels
		if transport != "ssh" {
			n = channels - 1 // Dial opened one
		}
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			welcomed int
			refused  int
			opened   []tunnel.Stream
		)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, err := sess.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindControl, Target: "cache"})
				if err != nil {
					t.Error(err)
					return
				}
				// Closed only once every open is answered: the welcomed
				// control stream's end ends the session, which would cut
				// the opens still in flight.
				mu.Lock()
				opened = append(opened, st)
				mu.Unlock()
				_ = st.SetDeadline(time.Now().Add(10 * time.Second))
				if err := control.WriteJSON(st, control.FrameHello, &control.Hello{Client: "test", Target: "cache"}); err != nil {
					t.Error(err)
					return
				}
				typ, _, err := control.ReadFrame(st)
				mu.Lock()
				defer mu.Unlock()
				var se *tunnel.StatusError
				switch {
				case errors.As(err, &se) && se.Code == tunnel.StatusBadRequest:
					refused++
				case err == nil && typ == control.FrameWelcome:
					welcomed++
				default:
					t.Errorf("control stream: frame %d, %v", typ, err)
				}
			}()
		}
		wg.Wait()
		for _, st := range opened {
			st.Close()
		}
		want := 1
		if transport != "ssh" {
			want = 0 // the one allowed is Dial's
		}
		if welcomed != want || refused != n-want {
			t.Fatalf("%d control streams: %d welcomed, %d refused; want %d welcomed", n, welcomed, refused, want)
		}
		t.Logf("%s: %d further control streams opened, %d welcomed, %d refused", transport, n, welcomed, refused)
	})
}

// TestRevocation_QUICMigration (issue 10, finding 3): from= is judged again
// when a QUIC connection moves to a new address. A raw quic-go client
// (the client package does not migrate) authenticates from 127.0.0.1 with
// a key restricted to from="127.0.0.1", then migrates the connection to a
// socket on 127.0.0.2. The gateway process polls the connection's address
// every 0.5 s (quic-go has no migration callback) and ends the session with
// FrameRevoked code source_denied within 2 s of the switch.
func TestRevocation_QUICMigration(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "pinned")
	g := startGatewayProc(t, gatewayProcOpts{
		Targets:    map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", r.Addr)},
		Authorized: []string{`from="127.0.0.1" ` + k.Line},
		NoSSH:      true,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	listen := func(ip string) *quic.Transport {
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
		if err != nil {
			t.Fatal(err)
		}
		tr := &quic.Transport{Conn: udp}
		t.Cleanup(func() { tr.Close() })
		return tr
	}
	tr1, tr2 := listen("127.0.0.1"), listen("127.0.0.2")
	gw, err := net.ResolveUDPAddr("udp", g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	tlsConf := certs.ClientTLSConfig(func(key ssh.PublicKey) error {
		if !bytes.Equal(key.Marshal(), g.HostKey.Marshal()) {
			return errors.New("not the gateway's host key")
		}
		return nil
	})
	conn, err := tr1.Dial(ctx, gw, tlsConf, &quic.Config{MaxIdleTimeout: 10 * time.Second, KeepAlivePeriod: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	ctrl, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cs := conn.ConnectionState()
	binding, err := cs.TLS.ExportKeyingMaterial(tunnel.BindingLabel, nil, 32)
	if err != nil {
		t.Fatal(err)
	}
	signer := loadTestSigner(t, k.Path)
	sig, err := auth.SignBinding(signer, binding)
	if err != nil {
		t.Fatal(err)
	}
	hdr, _ := tunnel.AppendHeader(nil, tunnel.OpenRequest{Kind: tunnel.KindControl, Target: "cache"})
	if _, err := ctrl.Write(hdr); err != nil {
		t.Fatal(err)
	}
	hello := &control.Hello{Client: "test", Target: "cache", PublicKey: signer.PublicKey().Marshal(),
		SigFormat: sig.Format, SigBlob: sig.Blob, SigRest: sig.Rest}
	if err := control.WriteJSON(ctrl, control.FrameHello, hello); err != nil {
		t.Fatal(err)
	}
	_ = ctrl.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := tunnel.ReadStatus(ctrl); err != nil {
		t.Fatalf("control stream refused: %v", err)
	}
	if typ, payload, err := control.ReadFrame(ctrl); err != nil || typ != control.FrameWelcome || !bytes.Contains(payload, []byte(`"ok":true`)) {
		t.Fatalf("welcome: type %d %s %v", typ, payload, err)
	}
	path, err := conn.AddPath(tr2)
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	err = path.Probe(pctx)
	pcancel()
	if err != nil {
		t.Fatalf("probe the new path: %v", err)
	}
	if err := path.Switch(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// Traffic on the new path, so that the gateway moves to it.
	if err := control.WriteFrame(ctrl, control.FramePing, nil); err != nil {
		t.Fatal(err)
	}
	_ = ctrl.SetReadDeadline(start.Add(revokeBound + time.Second))
	for {
		typ, payload, err := control.ReadFrame(ctrl)
		if err != nil {
			t.Fatalf("no Revoked frame %s after the migration: %v", time.Since(start).Round(time.Millisecond), err)
		}
		if typ != control.FrameRevoked {
			continue
		}
		took := time.Since(start)
		var rv control.Revoked
		if json.Unmarshal(payload, &rv) != nil || rv.Code != control.CodeSourceDenied || !bytes.Contains(payload, []byte("127.0.0.2")) {
			t.Fatalf("revoked frame %s: want source_denied from 127.0.0.2", payload)
		}
		if took > revokeBound {
			t.Fatalf("revoked %s after the migration, bound %s", took, revokeBound)
		}
		t.Logf("migrated to %s: revoked %s after the switch (bound %s): %s", conn.LocalAddr(), took.Round(time.Millisecond), revokeBound, payload)
		break
	}
	select {
	case <-conn.Context().Done():
	case <-time.After(revokeBound):
		t.Fatalf("the gateway did not close the migrated session")
	}
}

// TestRevocation_OpenSSH (issue 10, finding 3): a stock OpenSSH client
// (`ssh -N -L`) has no control channel to read a reason on: when its key
// is removed and the gateway process gets SIGHUP, its connection is
// closed, so ssh and the forwarded connection end within 2 s.
func TestRevocation_OpenSSH(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "ops")
	g := startGatewayProc(t, gatewayProcOpts{
		Targets:    map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", r.Addr)},
		Authorized: []string{k.Line},
	})
	p := sshTestStartOpenSSH(t, k.Path, g.KnownHosts(t), g.SSHAddr, "cache:6379")
	select {
	case <-p.exited:
		t.Fatalf("ssh exited: %v; stderr:\n%s", p.err, p.Stderr())
	default:
	}
	c, err := net.Dial("tcp", p.Locals[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := redisPing(c); err != nil {
		t.Fatalf("PING through ssh -L: %v", err)
	}
	g.WriteAuthorizedKeys(t, []string{})
	start := time.Now()
	g.Reload(t)
	took := waitClosed(t, c, start, revokeBound)
	select {
	case <-p.exited:
	case <-time.After(time.Until(start.Add(revokeBound))):
		t.Fatalf("ssh still connected %s after the revocation", time.Since(start).Round(time.Millisecond))
	}
	exited := time.Since(start)
	if took > revokeBound || exited > revokeBound {
		t.Fatalf("forward closed %s, ssh exited %s after SIGHUP; bound %s", took, exited, revokeBound)
	}
	g.WaitLog(t, "access revoked: ending the session", 5*time.Second)
	t.Logf("ssh -L: forwarded connection closed %s, ssh exited (%v) %s after SIGHUP (bound %s)",
		took.Round(time.Millisecond), p.err, exited.Round(time.Millisecond), revokeBound)
}

// TestRevocation_WhileDown (issue 10, finding 3): a key removed while the
// client was disconnected (here: the gateway process restarted with a new
// authorized_keys) makes the reconnecting client stop with ErrRevoked
// instead of retrying forever: the refusal of the key is final. The bound
// is the client's reconnect backoff (at most 10 s) plus one dial.
func TestRevocation_WhileDown(t *testing.T) {
	r := testenv.StartRedis(t)
	const bound = 15 * time.Second
	forEachTransport(t, func(t *testing.T, transport string) {
		k, other := newKey(t, "gone"), newKey(t, "stays")
		g := startGatewayProc(t, gatewayProcOpts{
			Targets:    map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", r.Addr)},
			Authorized: []string{k.Line, other.Line},
		})
		cl := mustConnect(t, g, transport, "cache", k)
		g.Stop(t)
		g.WriteAuthorizedKeys(t, []string{other.Line})
		if err := g.start(t, cachetunBinary(t)); err != nil {
			t.Fatalf("restart the gateway: %v\n%s", err, g.Log())
		}
		start := time.Now()
		var runErr error
		select {
		case runErr = <-cl.Err:
		case <-time.After(bound):
			t.Fatalf("client still reconnecting %s after the gateway came back without its key", bound)
		}
		cl.Err <- runErr // for the cleanup
		if !errors.Is(runErr, client.ErrRevoked) || !errors.Is(runErr, client.ErrAuthFailed) {
			t.Fatalf("Run returned %v, want ErrRevoked wrapping the refusal", runErr)
		}
		t.Logf("%s: client stopped %s after the gateway restarted without its key (bound %s): %s",
			transport, time.Since(start).Round(time.Millisecond), bound, errText(runErr))
	})
}

// TestStreams_FinishedFloodBounded (issue 10, finding 5, the same class):
// a stream the gateway served also counts until it is really gone. The
// client of a real gateway process with max_streams_per_session: 10
// opens 300 streams to the real redis node, sends QUIT and 256 KiB behind
// it (redis answers +OK and closes, so the gateway's relay ends), and
// never closes its side. On tls (yamux keeps such a stream, and what the
// client sends on it, for a minute) the 10 served streams keep their
// slots, the next 10 are refused with the limit status, and the session
// is closed; on quic and ssh the transport frees a finished stream at
// once, so all 300 are served. Gateway RSS growth stays under 32 MiB.
func TestStreams_FinishedFloodBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("floods a gateway process")
	}
	const (
		limit     = 10
		opens     = 300
		perStream = 256 << 10
		maxGrowth = 32 << 20
	)
	r := testenv.StartRedis(t)
	forEachTransport(t, func(t *testing.T, transport string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		g, sess := floodSession(ctx, t, r.Addr, transport, limit)
		base := g.RSS(t)
		g.ResetPeakRSS(t)
		payload := append([]byte("QUIT\r\n"), bytes.Repeat([]byte("x"), perStream)...)
		peak := base
		counts := map[string]int{}
		var streams []tunnel.Stream
		for i := 0; i < opens && counts["session closed"] == 0; i++ {
			octx, ocancel := context.WithTimeout(ctx, 5*time.Second)
			st, err := sess.OpenStream(octx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "cache", Node: r.Addr})
			ocancel()
			if err != nil {
				counts["session closed"]++
				break
			}
			streams = append(streams, st) // never closed until the end
			_ = st.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = st.Write(payload)
			buf := make([]byte, 5)
			_, err = io.ReadFull(st, buf)
			var se *tunnel.StatusError
			switch {
			case err == nil && string(buf) == "+OK\r\n":
				counts["served"]++
			case errors.As(err, &se):
				counts[se.Code.String()]++
			case isDone(sess, transport == "tls"):
				counts["session closed"]++
			default:
				// Accepted, but redis closed before the reply reached
				// us: the relay ended with a reset (QUIC), served too.
				counts["served"]++
			}
			if rss := g.RSS(t); rss > peak {
				peak = rss
			}
		}
		time.Sleep(200 * time.Millisecond) // let the gateway take in what is in flight
		if rss := g.PeakRSS(t); rss > peak {
			peak = rss // VmHWM: also a moment between two samples
		}
		growth := peak - base
		t.Logf("%s: %d opens, %v; gateway RSS %d MiB -> peak %d MiB (growth %.1f MiB, bound %d MiB)",
			transport, len(streams), counts, base>>20, peak>>20, float64(growth)/(1<<20), maxGrowth>>20)
		if growth > maxGrowth {
			t.Errorf("gateway RSS grew by %d bytes, bound %d", growth, maxGrowth)
		}
		switch transport {
		case "tls":
			if counts["served"] != limit || counts["limit reached"] != limit || counts["session closed"] != 1 {
				t.Errorf("%v: want %d served, %d refused with the limit, then the session closed", counts, limit, limit)
			}
		default:
			if counts["served"] != opens {
				t.Errorf("%v: want all %d served", counts, opens)
			}
		}
		for _, st := range streams {
			st.Close()
		}
	})
}

// isDone reports whether the session has ended; with wait, it waits a
// moment for the end to be noticed.
func isDone(s tunnel.Session, wait bool) bool {
	var after <-chan time.Time
	if wait {
		after = time.After(200 * time.Millisecond)
	}
	select {
	case <-s.Done():
		return true
	case <-after:
		return false
	default:
		if wait {
			select {
			case <-s.Done():
				return true
			case <-after:
			}
		}
		return false
	}
}

// floodSession starts a gateway process with one redis target at addr and
// max_streams_per_session limit, and returns an authenticated session of a
// "flood" key over transport (closed when the test ends); more keys may use
// the gateway too.
func floodSession(ctx context.Context, t *testing.T, addr, transport string, limit int, more ...key) (*gatewayProc, tunnel.Session) {
	t.Helper()
	k := newKey(t, "flood")
	lines := []string{k.Line}
	for _, m := range more {
		lines = append(lines, m.Line)
	}
	g := startGatewayProc(t, gatewayProcOpts{
		Targets:    map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", addr)},
		Limits:     map[string]string{"max_streams_per_session": fmt.Sprint(limit)},
		Authorized: lines,
	})
	cl, err := client.New(client.Options{
		Servers: []string{g.ServerAddr(transport)}, Target: "cache", Transport: transport,
		Identity: k.Path, KnownHosts: g.KnownHosts(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	sess, _, err := cl.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return g, sess
}
