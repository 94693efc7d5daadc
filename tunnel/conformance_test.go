package tunnel_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/certs"
	"github.com/cachetun/cachetun/tunnel"
)

// pair is one client and one server session of a transport on loopback.
type pair struct {
	transport      string
	client, server tunnel.Session
}

// pairOptions change how a pair is built (see forEachTransport).
type pairOptions struct {
	// unauthenticated leaves the server session as it is before the
	// gateway verified a Hello (tunnel.Gated).
	unauthenticated bool
	// serverMaxStreams and clientMaxStreams set MaxStreams of the server's
	// and the client's transport config; 0 keeps the default.
	serverMaxStreams, clientMaxStreams int
}

type pairOption func(*pairOptions)

func unauthenticated() pairOption { return func(o *pairOptions) { o.unauthenticated = true } }

func maxStreams(server, client int) pairOption {
	return func(o *pairOptions) { o.serverMaxStreams, o.clientMaxStreams = server, client }
}

var allTransports = []string{"quic", "tls", "ssh"}

// forEachTransport runs body once per transport, as a subtest named after
// it, with a fresh pair, and fails the subtest if it leaves a goroutine
// behind (the snapshot is taken before the pair exists; the check runs
// after every cleanup). Every transport test goes through here, so that
// each holds all three transports to the same contract.
func forEachTransport(t *testing.T, body func(t *testing.T, p pair), opts ...pairOption) {
	t.Helper()
	var o pairOptions
	for _, opt := range opts {
		opt(&o)
	}
	for _, tr := range allTransports {
		t.Run(tr, func(t *testing.T) {
			tunnel.VerifyNoLeaks(t)
			body(t, newPairWith(t, tr, o))
		})
	}
}

// newPair connects a client and a server of transport over loopback. No
// authentication beyond the transport's: these tests are about streams.
func newPair(t testing.TB, transport string) pair {
	t.Helper()
	return newPairWith(t, transport, pairOptions{})
}

func newPairWith(t testing.TB, transport string, o pairOptions) pair {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ln tunnel.Listener
	var dial func() (tunnel.Session, error)
	switch transport {
	case "quic", "tls":
		sconf, err := certs.ServerTLSConfig(priv, nil)
		if err != nil {
			t.Fatal(err)
		}
		cconf := certs.ClientTLSConfig(func(ssh.PublicKey) error { return nil })
		if transport == "quic" {
			scfg, ccfg := tunnel.DefaultQUICConfig(), tunnel.DefaultQUICConfig()
			if o.serverMaxStreams > 0 {
				scfg.MaxStreams = int64(o.serverMaxStreams)
			}
			if o.clientMaxStreams > 0 {
				ccfg.MaxStreams = int64(o.clientMaxStreams)
			}
			ln, err = tunnel.ListenQUIC("127.0.0.1:0", sconf, scfg)
			dial = func() (tunnel.Session, error) {
				return tunnel.DialQUIC(ctx, ln.Addr().String(), cconf, ccfg)
			}
		} else {
			scfg, ccfg := tunnel.DefaultTLSConfig(), tunnel.DefaultTLSConfig()
			if o.serverMaxStreams > 0 {
				scfg.MaxStreams = o.serverMaxStreams
			}
			if o.clientMaxStreams > 0 {
				ccfg.MaxStreams = o.clientMaxStreams
			}
			ln, err = tunnel.ListenTLS("127.0.0.1:0", sconf, scfg)
			dial = func() (tunnel.Session, error) {
				return tunnel.DialTLS(ctx, ln.Addr().String(), cconf, ccfg)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	case "ssh":
		hostSigner, err := ssh.NewSignerFromSigner(priv)
		if err != nil {
			t.Fatal(err)
		}
		scfg, ccfg := tunnel.DefaultSSHConfig(), tunnel.DefaultSSHConfig()
		if o.serverMaxStreams > 0 {
			scfg.MaxStreams = o.serverMaxStreams
		}
		if o.clientMaxStreams > 0 {
			ccfg.MaxStreams = o.clientMaxStreams
		}
		sconf := &ssh.ServerConfig{NoClientAuth: true}
		sconf.AddHostKey(hostSigner)
		ln, err = tunnel.ListenSSH("127.0.0.1:0", sconf, scfg)
		if err != nil {
			t.Fatal(err)
		}
		dial = func() (tunnel.Session, error) {
			return tunnel.DialSSH(ctx, ln.Addr().String(), &ssh.ClientConfig{
				User: "test", HostKeyCallback: ssh.FixedHostKey(hostSigner.PublicKey()),
			}, ccfg)
		}
	default:
		t.Fatalf("unknown transport %q", transport)
	}
	accepted := make(chan tunnel.Session, 1)
	go func() {
		s, err := ln.Accept(ctx)
		if err == nil {
			accepted <- s
		}
		close(accepted)
	}()
	cs, err := dial()
	if err != nil {
		ln.Close()
		<-accepted
		t.Fatalf("dial %s: %v", transport, err)
	}
	ss, ok := <-accepted
	if !ok {
		cs.Close()
		ln.Close()
		t.Fatalf("%s: server accepted no session", transport)
	}
	// The pair stands for a session past authentication unless asked
	// otherwise (see TestGate_NothingBeforeAuthentication for before).
	if g, ok := ss.(tunnel.Gated); ok && !o.unauthenticated {
		g.Authenticated()
	}
	t.Cleanup(func() {
		cs.Close()
		ss.Close()
		ln.Close()
	})
	if !bytes.Equal(cs.Binding(), ss.Binding()) || len(cs.Binding()) < 16 {
		t.Fatalf("%s: bindings differ or too short: %x vs %x", transport, cs.Binding(), ss.Binding())
	}
	if cs.Transport() != transport || ss.Transport() != transport {
		t.Fatalf("Transport() = %q, %q; want %q", cs.Transport(), ss.Transport(), transport)
	}
	return pair{transport: transport, client: cs, server: ss}
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, tunnel.IgnoreQUICListen, tunnel.IgnoreIdleWorkers)
}

// serveRelay accepts streams on s and relays each to the upstream
// connection upstream() returns; it returns when the session ends.
func serveRelay(s tunnel.Session, upstream func() net.Conn, results chan<- tunnel.RelayResult) {
	for {
		in, err := s.AcceptStream(context.Background())
		if err != nil {
			return
		}
		go func() {
			if _, err := in.Request(time.Now().Add(5 * time.Second)); err != nil {
				in.Reject(tunnel.StatusBadRequest, "bad header")
				return
			}
			st, err := in.Accept()
			if err != nil {
				return
			}
			res := tunnel.Relay(context.Background(), upstream(), st, nil)
			if results != nil {
				results <- res
			}
		}()
	}
}

var proxyReq = tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:1"}

// acceptOne accepts the next stream on srv and returns it with its
// request.
func acceptOne(t testing.TB, srv tunnel.Session) (tunnel.Incoming, tunnel.OpenRequest) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in, err := srv.AcceptStream(ctx)
	if err != nil {
		t.Fatalf("AcceptStream: %v", err)
	}
	req, err := in.Request(time.Now().Add(5 * time.Second))
	if err != nil {
		t.Fatalf("Request: %v", err)
	}
	return in, req
}

// acceptQuiet is acceptOne for a goroutine other than the test's: nil
// when the accept or the request fails (the test's own checks then fail).
func acceptQuiet(srv tunnel.Session) tunnel.Incoming {
	in, err := srv.AcceptStream(context.Background())
	if err != nil {
		return nil
	}
	if _, err := in.Request(time.Now().Add(5 * time.Second)); err != nil {
		return nil
	}
	return in
}

// streamPair opens one proxied stream and returns its client and server
// ends after one round trip ("hi", "ok"), so that the open header and the
// status are behind both ends and only payload is left.
func streamPair(t testing.TB, p pair) (cst, sst tunnel.Stream) {
	t.Helper()
	type res struct {
		st  tunnel.Stream
		err error
	}
	opened := make(chan res, 1)
	go func() { // on SSH OpenStream returns once the server accepted
		st, err := p.client.OpenStream(context.Background(), proxyReq)
		if err == nil {
			_, err = st.Write([]byte("hi"))
		}
		opened <- res{st, err}
	}()
	in, _ := acceptOne(t, p.server)
	sst, err := in.Accept()
	if err != nil {
		t.Fatal(err)
	}
	r := <-opened
	if r.err != nil {
		t.Fatalf("OpenStream: %v", r.err)
	}
	cst = r.st
	t.Cleanup(func() { cst.Close(); sst.Close() })
	_ = sst.SetDeadline(time.Now().Add(10 * time.Second))
	_ = cst.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(sst, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("server read %q, %v; want hi", buf, err)
	}
	if _, err := sst.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(cst, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("client read %q, %v; want ok", buf, err)
	}
	_ = sst.SetDeadline(time.Time{})
	_ = cst.SetDeadline(time.Time{})
	return cst, sst
}

// within waits for ch at most d (a bound against hangs, not a measure of
// speed) and fails t with what otherwise.
func within[T any](t testing.TB, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s within %s", what, d)
		panic("unreachable")
	}
}

// readResult runs Read on st in a goroutine and delivers its error.
func readResult(st tunnel.Stream) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := st.Read(make([]byte, 1))
		ch <- err
	}()
	return ch
}

// TestConformance_OpenAccept: the request crosses unchanged on control and
// proxy streams, bytes echo back, and closing the client session ends the
// server's: Done closes and AcceptStream fails.
func TestConformance_OpenAccept(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		for _, want := range []tunnel.OpenRequest{
			{Kind: tunnel.KindControl, Target: "cache"},
			{Kind: tunnel.KindProxy, Target: "cache", Node: "10.0.1.230:6379"},
		} {
			type res struct {
				st  tunnel.Stream
				err error
			}
			opened := make(chan res, 1)
			go func() {
				st, err := p.client.OpenStream(context.Background(), want)
				if err == nil {
					err = st.CloseWrite() // sends the header alone, at once
				}
				opened <- res{st, err}
			}()
			in, got := acceptOne(t, p.server)
			if got != want {
				t.Fatalf("Request() = %+v, want %+v", got, want)
			}
			sst, err := in.Accept()
			if err != nil {
				t.Fatal(err)
			}
			r := within(t, opened, 10*time.Second, "OpenStream returned")
			if r.err != nil {
				t.Fatalf("OpenStream: %v", r.err)
			}
			msg := []byte("PING " + want.Node)
			if _, err := sst.Write(msg); err != nil {
				t.Fatal(err)
			}
			sst.Close()
			_ = r.st.SetReadDeadline(time.Now().Add(10 * time.Second))
			if got, err := io.ReadAll(r.st); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("client read %q, %v; want %q", got, err, msg)
			}
			r.st.Close()
		}
		p.client.Close()
		within(t, p.server.Done(), 10*time.Second, "server session done after the client closed")
		if _, err := p.server.AcceptStream(context.Background()); err == nil {
			t.Error("AcceptStream on an ended session succeeded")
		}
		if _, err := p.client.OpenStream(context.Background(), proxyReq); err == nil {
			t.Error("OpenStream on a closed session succeeded")
		}
	})
}

// TestConformance_SessionClose: Close ends the session and every stream
// of it on both ends: Reads blocked on either end return, Done closes on
// both, and a second Close is harmless. Each session has its own binding.
func TestConformance_SessionClose(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		if other := newPair(t, p.transport); bytes.Equal(other.client.Binding(), p.client.Binding()) {
			t.Fatalf("two sessions share the binding %x", p.client.Binding())
		}
		cst, sst := streamPair(t, p)
		clientRead, serverRead := readResult(cst), readResult(sst)
		if err := p.client.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := within(t, clientRead, 10*time.Second, "a Read blocked on a stream of the closed session returned"); err == nil {
			t.Error("Read on a stream of the closed session returned no error")
		}
		within(t, p.client.Done(), 10*time.Second, "Done closed after Close")
		within(t, p.server.Done(), 10*time.Second, "the peer's Done closed after Close")
		within(t, serverRead, 10*time.Second, "a Read blocked on the peer's stream returned")
		_ = p.client.Close() // idempotent: must not panic or hang
	})
}

// TestConformance_HalfCloseAndBytes: bytes cross both ways unchanged,
// and an EOF on either side arrives as EOF on the other while the other
// direction keeps flowing.
func TestConformance_HalfCloseAndBytes(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		upClient, upServer := tunnel.TCPPair(t) // upServer plays the cache
		results := make(chan tunnel.RelayResult, 1)
		go serveRelay(p.server, func() net.Conn { return upClient }, results)

		st, err := p.client.OpenStream(context.Background(), proxyReq)
		if err != nil {
			t.Fatal(err)
		}
		payload := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
		go func() {
			_, _ = st.Write(payload)
			_ = st.CloseWrite()
		}()
		got, err := io.ReadAll(upServer)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("upstream got %d bytes (err %v), want %d", len(got), err, len(payload))
		}
		// The client half-closed; the upstream can still answer.
		reply := []byte("+OK after your EOF\r\n")
		if _, err := upServer.Write(reply); err != nil {
			t.Fatal(err)
		}
		upServer.CloseWrite()
		back, err := io.ReadAll(st)
		if err != nil || !bytes.Equal(back, reply) {
			t.Fatalf("client read %q, %v; want %q", back, err, reply)
		}
		st.Close()
		upServer.Close()
		res := within(t, results, 10*time.Second, "relay ended after both sides closed")
		if res.Err != nil || res.StreamToConn != int64(len(payload)) || res.ConnToStream != int64(len(reply)) {
			t.Fatalf("relay result %+v", res)
		}
	})
}

// TestConformance_HalfClose: CloseWrite ends only the write side: the peer
// reads io.EOF and may go on writing, which the closer reads. CloseWrite
// and Close are idempotent; after Close, Read and Write fail.
func TestConformance_HalfClose(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		cst, sst := streamPair(t, p)
		_ = cst.SetDeadline(time.Now().Add(10 * time.Second))
		_ = sst.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := cst.Write([]byte("request")); err != nil {
			t.Fatal(err)
		}
		if err := cst.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if err := cst.CloseWrite(); err != nil {
			t.Fatalf("second CloseWrite: %v", err)
		}
		if _, err := cst.Write([]byte("x")); err == nil {
			t.Error("Write after CloseWrite succeeded")
		}
		got, err := io.ReadAll(sst)
		if err != nil || string(got) != "request" {
			t.Fatalf("server read %q, %v; want request then EOF", got, err)
		}
		if _, err := sst.Write([]byte("response")); err != nil {
			t.Fatalf("server write after the client's CloseWrite: %v", err)
		}
		if err := sst.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err = io.ReadAll(cst)
		if err != nil || string(got) != "response" {
			t.Fatalf("client read %q, %v; want response then EOF", got, err)
		}
		for i := range 2 {
			if err := cst.Close(); err != nil {
				t.Fatalf("Close #%d: %v", i+1, err)
			}
		}
		if _, err := cst.Read(make([]byte, 1)); err == nil {
			t.Error("Read after Close succeeded")
		}
		if _, err := cst.Write([]byte("x")); err == nil {
			t.Error("Write after Close succeeded")
		}
	})
}

// TestConformance_CloseAndAbort: Close and Abort, on either end, release a
// Read blocked on that end; afterwards Read and Write fail; both are
// idempotent. The peer of a Close reads io.EOF; the peer of an Abort reads
// an error on QUIC, which has stream resets, and io.EOF on SSH and
// TLS+yamux, which have none (see tunnel.Stream).
func TestConformance_CloseAndAbort(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		for _, end := range []string{"client", "server"} {
			for _, how := range []string{"close", "abort"} {
				t.Run(end+"_"+how, func(t *testing.T) {
					cst, sst := streamPair(t, p)
					local, peer := cst, sst
					if end == "server" {
						local, peer = sst, cst
					}
					blocked := readResult(local)
					stop := func() {
						if how == "close" {
							if err := local.Close(); err != nil {
								t.Errorf("Close: %v", err)
							}
						} else {
							local.Abort()
						}
					}
					// The blocked Read is released by stop and nothing else:
					// nothing else writes to local.
					stop()
					if err := within(t, blocked, 10*time.Second, "a Read blocked at "+how+" returned"); err == nil {
						t.Errorf("blocked Read after %s returned no error", how)
					}
					stop() // idempotent: no panic, no error
					if _, err := local.Read(make([]byte, 1)); err == nil {
						t.Errorf("Read after %s succeeded", how)
					}
					if _, err := local.Write([]byte("x")); err == nil {
						t.Errorf("Write after %s succeeded", how)
					}
					_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
					_, err := io.ReadAll(peer)
					switch {
					case errors.Is(err, os.ErrDeadlineExceeded):
						t.Fatalf("peer's Read did not end after %s", how)
					case how == "abort" && p.transport == "quic":
						if err == nil {
							t.Error("peer of an aborted QUIC stream read a clean end, want a reset")
						}
					case err != nil:
						t.Errorf("peer of a %s read %v, want io.EOF", how, err)
					}
				})
			}
		}
	})
}

// TestConformance_Deadlines: deadlines on either end work as on a
// net.Conn (see tunnel.Stream): a passed one fails the call with
// os.ErrDeadlineExceeded, a timeout net.Error; it releases a blocked Read
// or Write; moved before it passes it does nothing; passed with nothing
// blocked it is not fatal.
func TestConformance_Deadlines(t *testing.T) {
	isTimeout := func(t *testing.T, what string, err error) {
		t.Helper()
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("%s: %v, want os.ErrDeadlineExceeded and a timeout net.Error", what, err)
		}
	}
	forEachTransport(t, func(t *testing.T, p pair) {
		t.Run("client/first_read_before_the_status", func(t *testing.T) {
			// QUIC and TLS read the server's status in the client's first
			// Read: a deadline that passes before it came is not fatal
			// either.
			opened := make(chan tunnel.Stream, 1)
			go func() {
				st, err := p.client.OpenStream(context.Background(), proxyReq)
				if err != nil {
					t.Error(err)
					close(opened)
					return
				}
				_, _ = st.Write([]byte("hi"))
				opened <- st
			}()
			in, _ := acceptOne(t, p.server)
			sst, err := in.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer sst.Close()
			cst := within(t, opened, 10*time.Second, "OpenStream returned")
			if cst == nil {
				t.FailNow()
			}
			defer cst.Close()
			_ = cst.SetReadDeadline(time.Now().Add(-time.Second))
			_, err = cst.Read(make([]byte, 1))
			isTimeout(t, "first Read past its deadline", err)
			_ = cst.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := sst.Write([]byte("ok")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 2)
			if _, err := io.ReadFull(cst, buf); err != nil || string(buf) != "ok" {
				t.Fatalf("Read after moving the deadline: %q, %v; want ok", buf, err)
			}
		})
		for _, end := range []string{"client", "server"} {
			ends := func(t *testing.T) (local, peer tunnel.Stream) {
				cst, sst := streamPair(t, p)
				if end == "server" {
					return sst, cst
				}
				return cst, sst
			}
			t.Run(end+"/passed_while_idle_is_not_fatal", func(t *testing.T) {
				local, peer := ends(t)
				_ = local.SetReadDeadline(time.Now().Add(-time.Second))
				_, err := local.Read(make([]byte, 1))
				isTimeout(t, "Read past its deadline", err)
				_ = local.SetDeadline(time.Now().Add(-time.Second))
				_, err = local.Write([]byte("x"))
				isTimeout(t, "Write past its deadline", err)
				_ = local.SetDeadline(time.Time{})
				if _, err := peer.Write([]byte("y")); err != nil {
					t.Fatal(err)
				}
				_ = local.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(local, make([]byte, 1)); err != nil {
					t.Fatalf("Read after moving the deadline: %v", err)
				}
				if _, err := local.Write([]byte("z")); err != nil {
					t.Fatalf("Write after moving the deadline: %v", err)
				}
			})
			t.Run(end+"/releases_a_blocked_read", func(t *testing.T) {
				local, _ := ends(t)
				blocked := readResult(local)
				_ = local.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				isTimeout(t, "blocked Read", within(t, blocked, 10*time.Second, "a Read blocked past its deadline returned"))
			})
			t.Run(end+"/moved_before_it_passes", func(t *testing.T) {
				local, peer := ends(t)
				first := time.Now().Add(50 * time.Millisecond)
				_ = local.SetReadDeadline(first)
				_ = local.SetReadDeadline(time.Now().Add(time.Hour))
				go func() {
					// Write only once the first deadline is well past: a Read
					// that it still cut has failed by then.
					<-time.After(time.Until(first) + 200*time.Millisecond)
					_, _ = peer.Write([]byte("late"))
				}()
				if _, err := io.ReadFull(local, make([]byte, 4)); err != nil {
					t.Fatalf("Read with its deadline moved away: %v", err)
				}
			})
			t.Run(end+"/releases_a_blocked_write", func(t *testing.T) {
				local, _ := ends(t)
				// Nobody reads the peer: the stream's window fills (at most
				// 16 MiB on any transport), then Write blocks.
				_ = local.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
				buf := make([]byte, 64<<10)
				var err error
				for i := 0; i < 1024 && err == nil; i++ { // 64 MiB at most
					_, err = local.Write(buf)
				}
				isTimeout(t, "Write into a full window", err)
			})
		}
	})
}

// TestConformance_OpenStreamContext: OpenStream waits for room at most
// until its ctx ends. With MaxStreams 1 on both ends and a server that
// accepts nothing, the first or second open finds no room (SSH: the first
// waits for the server's accept; QUIC: the server allows one stream open;
// TLS: the client allows one open unanswered) and returns ctx's error.
func TestConformance_OpenStreamContext(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		for i := range 2 {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			st, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:" + strconv.Itoa(i)})
			cancel()
			if err != nil {
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("open #%d: %v, want context.DeadlineExceeded", i+1, err)
				}
				return
			}
			defer st.Close()
			if err := st.CloseWrite(); err != nil { // the header goes out
				t.Fatal(err)
			}
		}
		t.Fatal("two streams opened although the server accepted none and allows one")
	}, maxStreams(1, 1))
}

// TestConformance_StreamLimit: with MaxStreams 1 on the server, of two
// streams opened while the server accepts none, one waits to be accepted
// and the other never reaches AcceptStream: it fails at its first Read
// (SSH: StatusLimit; TLS: a reset) or its OpenStream ends with ctx (QUIC).
// The session goes on working: the first is served, and the next stream
// accepted is one opened after, not the one beyond the limit.
func TestConformance_StreamLimit(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		type outcome struct {
			node string
			st   tunnel.Stream
			err  error
		}
		outcomes := make(chan outcome, 2)
		for _, node := range []string{"a:1", "b:1"} {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				st, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: node})
				if err == nil {
					_, _ = st.Write([]byte("x")) // dropped if refused
					_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
					b := make([]byte, 2)
					_, err = io.ReadFull(st, b)
				}
				outcomes <- outcome{node, st, err}
			}()
		}
		// The server accepts nothing until one of the two has failed.
		loser := within(t, outcomes, 15*time.Second, "one of two streams beyond MaxStreams 1 failed")
		if loser.st != nil {
			defer loser.st.Close()
		}
		var se *tunnel.StatusError
		switch {
		case loser.err == nil:
			t.Fatalf("stream %s was served although the server accepted nothing", loser.node)
		case errors.Is(loser.err, os.ErrDeadlineExceeded):
			t.Fatalf("stream %s beyond the limit was held, not refused: %v", loser.node, loser.err)
		case p.transport == "ssh" && (!errors.As(loser.err, &se) || se.Code != tunnel.StatusLimit):
			t.Fatalf("ssh: stream beyond the limit: %v, want StatusLimit", loser.err)
		case p.transport == "quic" && !errors.Is(loser.err, context.DeadlineExceeded):
			t.Fatalf("quic: stream beyond the limit: %v, want OpenStream to wait until ctx ends", loser.err)
		}
		in, req := acceptOne(t, p.server)
		if req.Node == loser.node {
			t.Fatalf("the server accepted %s, the stream that failed", req.Node)
		}
		sst, err := in.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sst.Write([]byte("ok")); err != nil {
			t.Fatal(err)
		}
		winner := within(t, outcomes, 15*time.Second, "the stream within the limit was served")
		if winner.err != nil {
			t.Fatalf("stream %s within the limit: %v", winner.node, winner.err)
		}
		winner.st.Close()
		sst.Close()
		// A stream opened now is the next one the server accepts.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		marker := tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "marker:1"}
		go func() {
			st, err := p.client.OpenStream(ctx, marker)
			if err == nil {
				_ = st.CloseWrite()
				<-ctx.Done()
				st.Close()
			}
		}()
		in, req = acceptOne(t, p.server)
		if req != marker {
			t.Fatalf("next stream accepted: %+v, want %+v: the stream beyond the limit was queued", req, marker)
		}
		in.Reject(tunnel.StatusShutdown, "done")
		cancel()
	}, maxStreams(1, 0))
}

// TestConformance_Refusal: every refusal surfaces as a StatusError with
// the server's code and message on the client's first read, after early
// data.
func TestConformance_Refusal(t *testing.T) {
	codes := []tunnel.Status{tunnel.StatusDenied, tunnel.StatusUnreachable, tunnel.StatusUnknownTarget,
		tunnel.StatusUnknownNode, tunnel.StatusBadRequest, tunnel.StatusLimit, tunnel.StatusShutdown}
	forEachTransport(t, func(t *testing.T, p pair) {
		for _, code := range codes {
			done := make(chan struct{})
			go func() {
				defer close(done)
				in, err := p.server.AcceptStream(context.Background())
				if err != nil {
					return
				}
				req, err := in.Request(time.Now().Add(5 * time.Second))
				if err != nil || req.Node != "169.254.169.254:80" {
					in.Reject(tunnel.StatusBadRequest, "unexpected")
					return
				}
				in.Reject(code, "because "+code.String())
			}()
			st, err := p.client.OpenStream(context.Background(), tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "169.254.169.254:80"})
			if err != nil {
				t.Fatalf("OpenStream: %v (a refusal must show at Read)", err)
			}
			_, _ = st.Write([]byte("early"))
			_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = st.Read(make([]byte, 8))
			st.Close()
			var se *tunnel.StatusError
			if !errors.As(err, &se) || se.Code != code || se.Message != "because "+code.String() {
				t.Fatalf("Read after a %v refusal: %v, want that StatusError", code, err)
			}
			within(t, done, 10*time.Second, "Reject returned")
		}
	})
}

// TestConformance_UpstreamReset: when the cache resets its connection the
// relay ends with an error and the client's stream ends too.
func TestConformance_UpstreamReset(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		upClient, upServer := tunnel.TCPPair(t)
		results := make(chan tunnel.RelayResult, 1)
		go serveRelay(p.server, func() net.Conn { return upClient }, results)
		st, err := p.client.OpenStream(context.Background(), proxyReq)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if _, err := st.Write([]byte("PING\r\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 6)
		if _, err := io.ReadFull(upServer, buf); err != nil {
			t.Fatal(err)
		}
		upServer.SetLinger(0)
		upServer.Close() // RST
		_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(st); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("client stream did not end after the upstream reset")
		}
		if res := within(t, results, 10*time.Second, "relay ended after the upstream reset"); res.Err == nil {
			t.Fatalf("relay reported a clean end after a reset: %+v", res)
		}
	})
}

// TestConformance_IdleTimeout: a relay that moves nothing is cut.
func TestConformance_IdleTimeout(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		upClient, upServer := tunnel.TCPPair(t)
		defer upServer.Close()
		results := make(chan tunnel.RelayResult, 1)
		go func() {
			in, err := p.server.AcceptStream(context.Background())
			if err != nil {
				return
			}
			_, _ = in.Request(time.Now().Add(5 * time.Second))
			st, err := in.Accept()
			if err != nil {
				return
			}
			results <- tunnel.Relay(context.Background(), upClient, st, nil, tunnel.IdleTimeout(200*time.Millisecond))
		}()
		st, err := p.client.OpenStream(context.Background(), proxyReq)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		_, _ = st.Write([]byte("x"))
		if res := within(t, results, 10*time.Second, "idle relay was cut"); !res.Idle {
			t.Fatalf("relay ended without the idle flag: %+v", res)
		}
	})
}

// TestConformance_ManyStreams: concurrent streams on one session stay
// separate.
func TestConformance_ManyStreams(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		go func() {
			for {
				in, err := p.server.AcceptStream(context.Background())
				if err != nil {
					return
				}
				go func() {
					req, err := in.Request(time.Now().Add(5 * time.Second))
					if err != nil {
						return
					}
					st, err := in.Accept()
					if err != nil {
						return
					}
					defer st.Close()
					b, _ := io.ReadAll(st)
					_, _ = st.Write(append([]byte(req.Node+":"), b...))
					_ = st.CloseWrite()
				}()
			}
		}()
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := 0; i < 64; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				node := net.JoinHostPort("10.0.0.1", strconv.Itoa(i))
				st, err := p.client.OpenStream(context.Background(), tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: node})
				if err != nil {
					errs <- err
					return
				}
				defer st.Close()
				_ = st.SetDeadline(time.Now().Add(20 * time.Second))
				msg := bytes.Repeat([]byte{byte(i)}, 1000+i)
				_, _ = st.Write(msg)
				_ = st.CloseWrite()
				got, err := io.ReadAll(st)
				if err != nil || !bytes.Equal(got, append([]byte(node+":"), msg...)) {
					errs <- errors.New("stream " + node + " got wrong bytes")
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

// TestConformance_RejectReturnsWhenGone: Reject returns once the transport
// has freed the refused stream, so the gateway can count it until then.
// QUIC (FIN + STOP_SENDING, the client stack resets) and SSH (open
// failure) free it at once: Reject returns while the client still holds
// the stream open, 256 KiB of early payload behind the header. yamux cannot
// reset a stream: Reject drains it until the client closes it, and a client
// that holds it open for RejectLinger loses its session.
func TestConformance_RejectReturnsWhenGone(t *testing.T) {
	for _, clientCloses := range []bool{true, false} {
		name := "client_holds"
		if clientCloses {
			name = "client_closes"
		}
		t.Run(name, func(t *testing.T) {
			forEachTransport(t, func(t *testing.T, p pair) {
				if p.transport == "tls" && !clientCloses && testing.Short() {
					t.Skip("waits RejectLinger")
				}
				var closed atomic.Bool // the client closed its stream
				returned := make(chan bool, 1)
				go func() {
					in := acceptQuiet(p.server)
					if in == nil {
						return
					}
					in.Reject(tunnel.StatusUnknownNode, "no")
					returned <- closed.Load()
				}()
				st, err := p.client.OpenStream(context.Background(), proxyReq)
				if err != nil {
					t.Fatal(err)
				}
				_ = st.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = st.Write(make([]byte, 256<<10))
				var se *tunnel.StatusError
				if _, err := st.Read(make([]byte, 1)); !errors.As(err, &se) {
					t.Fatalf("read: %v, want the refusal", err)
				}
				if p.transport != "tls" {
					// Freed at once: Reject returns with the stream still open.
					if within(t, returned, 10*time.Second, "Reject returned") {
						t.Fatal("Reject returned only after the client closed")
					}
					st.Close()
					return
				}
				if clientCloses {
					closed.Store(true)
					st.Close()
					if !within(t, returned, 10*time.Second, "Reject returned after the client closed") {
						t.Fatal("yamux: Reject returned while the client still held the stream open")
					}
					return
				}
				within(t, returned, tunnel.RejectLinger+10*time.Second, "Reject returned after RejectLinger")
				select {
				case <-p.server.Done():
				default:
					t.Fatal("yamux: Reject returned, the client still holds the refused stream, and its session is up")
				}
			})
		})
	}
}

// TestConformance_RejectFreedOrder: RejectFreed's freed runs when the
// transport frees the refused stream. Where the refusal frees it (QUIC,
// SSH), freed has run by the time the client reads the refusal, so a
// gateway counting streams never counts it while the client opens its
// next one. On yamux it runs only after the client closed its side.
func TestConformance_RejectFreedOrder(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		var freed, closed atomic.Bool
		freedAfterClose := make(chan bool, 1)
		go func() {
			in := acceptQuiet(p.server)
			if in == nil {
				return
			}
			calls := 0
			tunnel.RejectFreed(in, tunnel.StatusUnknownNode, "no", func() {
				calls++
				freedAfterClose <- closed.Load()
				freed.Store(true)
			})
			if calls != 1 {
				t.Errorf("freed ran %d times, want once", calls)
			}
		}()
		st, err := p.client.OpenStream(context.Background(), proxyReq)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		_ = st.SetDeadline(time.Now().Add(10 * time.Second))
		var se *tunnel.StatusError
		if _, err := st.Read(make([]byte, 1)); !errors.As(err, &se) || se.Code != tunnel.StatusUnknownNode {
			t.Fatalf("read: %v, want the unknown-node refusal", err)
		}
		if p.transport != "tls" {
			if !freed.Load() {
				t.Fatal("the client read the refusal before freed ran")
			}
			return
		}
		if freed.Load() {
			t.Fatal("yamux: freed ran while the client still held the refused stream open")
		}
		closed.Store(true)
		st.Close()
		if !within(t, freedAfterClose, 10*time.Second, "freed after the client closed") {
			t.Fatal("yamux: freed ran before the client closed")
		}
	})
}
