package tunnel

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// sshTestSigner returns a fresh ed25519 signer.
func sshTestSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sshTestEnv is a listener whose server config accepts one client key and
// records "alice" as its auth info.
type sshTestEnv struct {
	ln        Listener
	hostKey   ssh.Signer
	clientKey ssh.Signer
}

func newSSHTestEnv(t testing.TB, sc SSHConfig) *sshTestEnv {
	t.Helper()
	e := &sshTestEnv{hostKey: sshTestSigner(t), clientKey: sshTestSigner(t)}
	conf := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if !bytes.Equal(k.Marshal(), e.clientKey.PublicKey().Marshal()) {
				return nil, errors.New("unknown key")
			}
			return &ssh.Permissions{ExtraData: map[any]any{SSHAuthInfoKey: "alice"}}, nil
		},
	}
	conf.AddHostKey(e.hostKey)
	ln, err := ListenSSH("127.0.0.1:0", conf, sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	e.ln = ln
	return e
}

func (e *sshTestEnv) clientConfig() *ssh.ClientConfig {
	return &ssh.ClientConfig{
		User:            "cache",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(e.clientKey)},
		HostKeyCallback: ssh.FixedHostKey(e.hostKey.PublicKey()),
	}
}

// pair dials addr (the listener, or a proxy in front of it) and returns
// both ends of the session.
func (e *sshTestEnv) pair(t testing.TB, addr string, sc SSHConfig) (client, server Session) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		s   Session
		err error
	}
	acc := make(chan res, 1)
	go func() {
		s, err := e.ln.Accept(ctx)
		acc <- res{s, err}
	}()
	c, err := DialSSH(ctx, addr, e.clientConfig(), sc)
	if err != nil {
		t.Fatalf("DialSSH: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	r := <-acc
	if r.err != nil {
		t.Fatalf("Accept: %v", r.err)
	}
	t.Cleanup(func() { r.s.Close() })
	return c, r.s
}

func sshTestConfig() SSHConfig {
	sc := DefaultSSHConfig()
	sc.HandshakeTimeout = 5 * time.Second
	return sc
}

// acceptOne accepts the next stream on srv and returns its request.
func acceptOne(t testing.TB, srv Session) (Incoming, OpenRequest) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in, err := srv.AcceptStream(ctx)
	if err != nil {
		t.Fatalf("AcceptStream: %v", err)
	}
	req, err := in.Request(time.Now().Add(time.Second))
	if err != nil {
		t.Fatalf("Request: %v", err)
	}
	return in, req
}

// TestSSH_AuthInfo: the server session carries what the auth callback
// stored for the key that authenticated (the rest of opening and accepting
// is in TestConformance_OpenAccept).
func TestSSH_AuthInfo(t *testing.T) {
	VerifyNoLeaks(t)
	sc := sshTestConfig()
	e := newSSHTestEnv(t, sc)
	cl, srv := e.pair(t, e.ln.Addr().String(), sc)
	if got := srv.(PreAuthenticated).AuthInfo(); got != "alice" {
		t.Errorf("server AuthInfo() = %v, want alice", got)
	}
	if got := cl.(PreAuthenticated).AuthInfo(); got != nil {
		t.Errorf("client AuthInfo() = %v, want nil", got)
	}
	cl.Close()
	<-srv.Done()
	if _, err := srv.AcceptStream(context.Background()); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("AcceptStream after close: %v, want ErrSessionClosed", err)
	}
}

func TestSSH_OpenRequestValidation(t *testing.T) {
	VerifyNoLeaks(t)
	sc := sshTestConfig()
	e := newSSHTestEnv(t, sc)
	cl, srv := e.pair(t, e.ln.Addr().String(), sc)
	conn := cl.(*sshSession).conn
	hdr, _ := AppendHeader(nil, OpenRequest{Kind: KindProxy, Target: "cache", Node: "n:1"})
	ctlHdr, _ := AppendHeader(nil, OpenRequest{Kind: KindControl, Target: "cache"})
	cases := []struct {
		name  string
		typ   string
		extra []byte
	}{
		{"proxy header on control channel", ChannelControl, hdr},
		{"trailing bytes on control channel", ChannelControl, append(ctlHdr[:len(ctlHdr):len(ctlHdr)], 'x')},
		{"payload over MaxOpenPayload", ChannelStream, append(hdr[:len(hdr):len(hdr)], make([]byte, MaxOpenPayload+1)...)},
		{"bad magic", ChannelStream, []byte("XX\x01\x02\x00\x00")},
		{"truncated", ChannelStream, hdr[:4]},
		{"direct-tcpip garbage", "direct-tcpip", []byte{0, 0, 0, 9, 'x'}},
		{"direct-tcpip port out of range", "direct-tcpip", ssh.Marshal(&sshDirectTCPIP{DestAddr: "cache", DestPort: 70000})},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			go func() {
				in, err := srv.AcceptStream(context.Background())
				if err != nil {
					return
				}
				if _, err := in.Request(time.Time{}); err == nil {
					in.Reject(StatusOK, "validation passed") // makes the test fail below
					return
				}
				in.Reject(StatusBadRequest, "malformed")
			}()
			_, _, err := conn.OpenChannel(tc.typ, tc.extra)
			var oe *ssh.OpenChannelError
			if !errors.As(err, &oe) || oe.Message == "validation passed" {
				t.Fatalf("OpenChannel: %v, want a refusal as malformed", err)
			}
		})
	}
}

// TestSSH_DirectTCPIP: stock clients' port forwards become KindProxy
// requests without target, and refusals use the standard reasons.
func TestSSH_DirectTCPIP(t *testing.T) {
	VerifyNoLeaks(t)
	sc := sshTestConfig()
	e := newSSHTestEnv(t, sc)
	cl, srv := e.pair(t, e.ln.Addr().String(), sc)
	sshc := cl.(*sshSession).conn

	cases := []struct {
		host   string
		port   uint32
		status Status
		reason ssh.RejectionReason
	}{
		{"1.cache", 6379, StatusUnknownNode, ssh.Prohibited},
		{"169.254.169.254", 80, StatusDenied, ssh.Prohibited},
		{"cache", 6379, StatusUnreachable, ssh.ConnectionFailed},
		{"cache", 6379, StatusLimit, ssh.ResourceShortage},
		{"::1", 6379, StatusOK, 0},
	}
	for _, tc := range cases {
		payload := ssh.Marshal(&sshDirectTCPIP{DestAddr: tc.host, DestPort: tc.port, OriginAddr: "127.0.0.1", OriginPort: 5555})
		done := make(chan OpenRequest, 1)
		go func() {
			in, req := acceptOne(t, srv)
			done <- req
			if tc.status != StatusOK {
				in.Reject(tc.status, "no way")
				return
			}
			st, err := in.Accept()
			if err != nil {
				return
			}
			_, _ = st.Write([]byte("+PONG\r\n"))
			st.Close()
		}()
		ch, reqs, err := sshc.OpenChannel("direct-tcpip", payload)
		req := <-done
		want := OpenRequest{Kind: KindProxy, Node: net.JoinHostPort(tc.host, "6379")}
		if tc.port == 80 {
			want.Node = net.JoinHostPort(tc.host, "80")
		}
		if req != want {
			t.Errorf("Request() = %+v, want %+v", req, want)
		}
		if tc.status == StatusOK {
			if err != nil {
				t.Fatalf("open direct-tcpip: %v", err)
			}
			go ssh.DiscardRequests(reqs)
			b, err := io.ReadAll(ch)
			if err != nil || string(b) != "+PONG\r\n" {
				t.Errorf("read %q, %v", b, err)
			}
			ch.Close()
			continue
		}
		var oe *ssh.OpenChannelError
		if !errors.As(err, &oe) || oe.Reason != tc.reason || !strings.Contains(oe.Message, tc.status.String()) || !strings.Contains(oe.Message, "no way") {
			t.Errorf("refusal %v: got %v, want reason %v with the status and message", tc.status, err, tc.reason)
		}
	}
}

func TestSSH_UnsupportedChannelsAndRequests(t *testing.T) {
	VerifyNoLeaks(t)
	sc := sshTestConfig()
	e := newSSHTestEnv(t, sc)
	cl, _ := e.pair(t, e.ln.Addr().String(), sc)
	conn := cl.(*sshSession).conn
	_, _, err := conn.OpenChannel("session", nil)
	var oe *ssh.OpenChannelError
	if !errors.As(err, &oe) || oe.Reason != ssh.UnknownChannelType || !strings.Contains(oe.Message, "ssh -N -L") {
		t.Errorf("session channel: %v, want UnknownChannelType naming ssh -N -L", err)
	}
	for _, name := range []string{"keepalive@openssh.com", "tcpip-forward"} {
		ok, _, err := conn.SendRequest(name, true, nil)
		if ok || err != nil {
			t.Errorf("global request %s = %v, %v; want false, nil", name, ok, err)
		}
	}
}

// sshStreamPair opens one proxied stream and returns client and server
// ends.
func sshStreamPair(t testing.TB, cl, srv Session) (Stream, Stream) {
	t.Helper()
	opened := make(chan Stream, 1)
	go func() {
		st, err := cl.OpenStream(context.Background(), OpenRequest{Kind: KindProxy, Target: "cache", Node: "n:1"})
		if err != nil {
			t.Error(err)
		}
		opened <- st
	}()
	in, _ := acceptOne(t, srv)
	sst, err := in.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cst := <-opened
	if cst == nil {
		t.FailNow()
	}
	t.Cleanup(func() { cst.Close(); sst.Close() })
	return cst, sst
}

// sshFreezeProxy relays TCP between a client and addr until Freeze, after
// which it silently drops everything, like a peer that vanished.
type sshFreezeProxy struct {
	ln       net.Listener
	frozen   atomic.Bool
	toClient atomic.Int64 // writes forwarded from the server to the client
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

func newSSHFreezeProxy(t testing.TB, addr string) *sshFreezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &sshFreezeProxy{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(up, c, nil)
			go p.pipe(c, up, &p.toClient)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *sshFreezeProxy) pipe(dst, src net.Conn, count *atomic.Int64) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.frozen.Load() {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
			if count != nil {
				count.Add(1)
			}
		}
		if err != nil {
			return
		}
	}
}

func TestSSH_KeepAliveDetectsDeadPeer(t *testing.T) {
	VerifyNoLeaks(t)
	srvConf := sshTestConfig()
	srvConf.KeepAlive = 0 // only the client probes here
	e := newSSHTestEnv(t, srvConf)
	proxy := newSSHFreezeProxy(t, e.ln.Addr().String())
	cliConf := sshTestConfig()
	cliConf.KeepAlive = 50 * time.Millisecond
	cliConf.KeepAliveTimeout = 200 * time.Millisecond
	cl, srv := e.pair(t, proxy.ln.Addr().String(), cliConf)

	// Keepalives are answered while the path works: with no stream traffic,
	// four more server-to-client writes (keepalive replies) cross the
	// proxy, and the session is still up after them.
	cst, _ := sshStreamPair(t, cl, srv)
	replies := proxy.toClient.Load() + 4
	deadline := time.Now().Add(10 * time.Second)
	for proxy.toClient.Load() < replies {
		if time.Now().After(deadline) {
			t.Fatalf("only %d server-to-client writes crossed the proxy in 10s, want %d", proxy.toClient.Load(), replies)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition
	}
	select {
	case <-cl.Done():
		t.Fatal("session ended while the peer was alive and answered keepalives")
	default:
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := cst.Read(make([]byte, 1))
		readErr <- err
	}()

	proxy.frozen.Store(true)
	select {
	case <-cl.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("client session still up 5s after the peer went silent")
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Error("blocked Read returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a Read blocked on the dead session was not released")
	}
}

// TestSSH_HandshakeTimeout: a client that connects and says nothing is
// dropped after HandshakeTimeout, and Close aborts handshakes in flight.
func TestSSH_HandshakeTimeout(t *testing.T) {
	VerifyNoLeaks(t)
	sc := sshTestConfig()
	sc.HandshakeTimeout = 200 * time.Millisecond
	e := newSSHTestEnv(t, sc)
	c, err := net.Dial("tcp", e.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	// The server sends its version line, then must hang up.
	_, err = io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("server kept a silent connection open past its handshake timeout")
	}

	sc.HandshakeTimeout = time.Hour
	e2 := newSSHTestEnv(t, sc)
	c2, err := net.Dial("tcp", e2.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	// Wait for the server's version line: the handshake is in flight.
	if _, err := c2.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() { e2.ln.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("listener Close waited for a stalled handshake")
	}
}

func TestSSH_DialRefusesBadHostKey(t *testing.T) {
	VerifyNoLeaks(t)
	sc := sshTestConfig()
	e := newSSHTestEnv(t, sc)
	conf := e.clientConfig()
	conf.HostKeyCallback = ssh.FixedHostKey(sshTestSigner(t).PublicKey())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s, err := DialSSH(ctx, e.ln.Addr().String(), conf, sc); err == nil {
		s.Close()
		t.Fatal("DialSSH accepted a host key it was not told to")
	}
	conf = e.clientConfig()
	conf.Auth = []ssh.AuthMethod{ssh.PublicKeys(sshTestSigner(t))}
	if s, err := DialSSH(ctx, e.ln.Addr().String(), conf, sc); err == nil {
		s.Close()
		t.Fatal("DialSSH authenticated with a key the server does not know")
	}
}

// TestSSH_OpenPayload: with EnableOpenPayload a proxy stream opens with
// its first Write, whose bytes (up to MaxOpenPayload) ride in the
// channel-open and are the accepted stream's first bytes; the rest follows
// on the channel. Nothing is opened before the Write, a refusal drops the
// payload and is the first Read's answer, FlushOpen opens with the header
// alone, and a stream closed unopened never reaches the server.
func TestSSH_OpenPayload(t *testing.T) {
	VerifyNoLeaks(t)
	sc := sshTestConfig()
	e := newSSHTestEnv(t, sc)
	cl, srv := e.pair(t, e.ln.Addr().String(), sc)
	cl.(OpenPayloader).EnableOpenPayload()
	req := OpenRequest{Kind: KindProxy, Target: "cache", Node: "n:1"}
	accept := func() (Incoming, OpenRequest, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		in, err := srv.AcceptStream(ctx)
		if err != nil {
			return nil, OpenRequest{}, err
		}
		r, err := in.Request(time.Now().Add(time.Second))
		return in, r, err
	}

	t.Run("payload in the open, the rest on the channel", func(t *testing.T) {
		cst, err := cl.OpenStream(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		defer cst.Close()
		if _, _, err := accept(); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("before the first write the server got a stream (%v), want none", err)
		}
		want := make([]byte, MaxOpenPayload+5000)
		for i := range want {
			want[i] = byte(i * 7)
		}
		wrote := make(chan error, 1)
		go func() { _, err := cst.Write(want); wrote <- err }()
		in, r, err := accept()
		if err != nil {
			t.Fatal(err)
		}
		if r.Target != "cache" || r.Node != "n:1" {
			t.Fatalf("request %+v", r)
		}
		if got := len(in.(*sshIncoming).early); got != MaxOpenPayload {
			t.Errorf("payload in the channel-open: %d bytes, want %d", got, MaxOpenPayload)
		}
		sst, err := in.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer sst.Close()
		got := make([]byte, len(want))
		if _, err := io.ReadFull(sst, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatal("the server read other bytes than the client wrote")
		}
		if err := <-wrote; err != nil {
			t.Fatal(err)
		}
		if _, err := sst.Write([]byte("+PONG\r\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 7)
		if _, err := io.ReadFull(cst, buf); err != nil || string(buf) != "+PONG\r\n" {
			t.Fatalf("client read %q, %v", buf, err)
		}
	})

	t.Run("refused: payload dropped, refusal read", func(t *testing.T) {
		cst, err := cl.OpenStream(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		defer cst.Close()
		go func() {
			if in, _, err := accept(); err == nil {
				in.Reject(StatusDenied, "no")
			}
		}()
		if n, err := cst.Write([]byte("SET k v\r\n")); n != 9 || err != nil {
			t.Fatalf("write to a refused stream: %d, %v; want it dropped", n, err)
		}
		var se *StatusError
		if _, err := cst.Read(make([]byte, 1)); !errors.As(err, &se) || se.Code != StatusDenied {
			t.Fatalf("read: %v, want the refusal", err)
		}
	})

	t.Run("FlushOpen opens with the header alone", func(t *testing.T) {
		cst, err := cl.OpenStream(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		defer cst.Close()
		if err := cst.FlushOpen(); err != nil {
			t.Fatal(err)
		}
		in, _, err := accept()
		if err != nil {
			t.Fatal(err)
		}
		if n := len(in.(*sshIncoming).early); n != 0 {
			t.Errorf("payload %d bytes, want none", n)
		}
		sst, err := in.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer sst.Close()
		if _, err := cst.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(sst, b); err != nil || b[0] != 'x' {
			t.Fatalf("server read %q, %v", b, err)
		}
	})

	t.Run("closed unopened: nothing reaches the server", func(t *testing.T) {
		cst, err := cl.OpenStream(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		cst.Close()
		if _, _, err := accept(); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("the server got a stream (%v), want none", err)
		}
	})

	t.Run("control stream opens at once", func(t *testing.T) {
		opened := make(chan error, 1)
		go func() {
			st, err := cl.OpenStream(context.Background(), OpenRequest{Kind: KindControl, Target: "cache"})
			if err == nil {
				st.Close()
			}
			opened <- err
		}()
		in, r, err := accept()
		if err != nil || r.Kind != KindControl {
			t.Fatalf("control stream: %+v, %v", r, err)
		}
		if _, err := in.Accept(); err != nil {
			t.Fatal(err)
		}
		if err := <-opened; err != nil {
			t.Fatal(err)
		}
	})
}
