package tunnel_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/certs"
	"github.com/cachetun/cachetun/tunnel"
)

// pair is one client and one server session of a transport on loopback.
type pair struct {
	client, server tunnel.Session
}

// newPair connects a client and a server of transport over loopback. No
// authentication beyond the transport's: these tests are about streams.
func newPair(t testing.TB, transport string) pair {
	t.Helper()
	return newPairAuth(t, transport, true)
}

// newPairAuth is newPair; with authenticated false the server session is
// left as it is before the gateway verified a Hello (tunnel.Gated).
func newPairAuth(t testing.TB, transport string, authenticated bool) pair {
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
			ln, err = tunnel.ListenQUIC("127.0.0.1:0", sconf, tunnel.DefaultQUICConfig())
			dial = func() (tunnel.Session, error) {
				return tunnel.DialQUIC(ctx, ln.Addr().String(), cconf, tunnel.DefaultQUICConfig())
			}
		} else {
			ln, err = tunnel.ListenTLS("127.0.0.1:0", sconf, tunnel.DefaultTLSConfig())
			dial = func() (tunnel.Session, error) {
				return tunnel.DialTLS(ctx, ln.Addr().String(), cconf, tunnel.DefaultTLSConfig())
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
		scfg := &ssh.ServerConfig{NoClientAuth: true}
		scfg.AddHostKey(hostSigner)
		ln, err = tunnel.ListenSSH("127.0.0.1:0", scfg, tunnel.DefaultSSHConfig())
		if err != nil {
			t.Fatal(err)
		}
		dial = func() (tunnel.Session, error) {
			return tunnel.DialSSH(ctx, ln.Addr().String(), &ssh.ClientConfig{
				User: "test", HostKeyCallback: ssh.FixedHostKey(hostSigner.PublicKey()),
			}, tunnel.DefaultSSHConfig())
		}
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
		t.Fatalf("dial %s: %v", transport, err)
	}
	ss, ok := <-accepted
	if !ok {
		t.Fatalf("%s: server accepted no session", transport)
	}
	// The pair stands for a session past authentication (see
	// TestGate_NothingBeforeAuthentication for before).
	if g, ok := ss.(tunnel.Gated); ok && authenticated {
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
	return pair{client: cs, server: ss}
}

var allTransports = []string{"quic", "tls", "ssh"}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/quic-go/quic-go.(*Transport).listen"),
		goleak.IgnoreAnyFunction("time.Sleep"), // tls listener accept back-off
	)
}

// serveEcho accepts streams on s and relays each to a fresh TCP echo-ish
// upstream produced by upstream(); it returns when the session ends.
func serveRelay(t *testing.T, s tunnel.Session, upstream func() net.Conn, results chan<- tunnel.RelayResult) {
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
			res := tunnel.Relay(context.Background(), upstream(), st, 0)
			if results != nil {
				results <- res
			}
		}()
	}
}

// TestConformance_HalfCloseAndBytes: bytes cross both ways unchanged,
// and an EOF on either side arrives as EOF on the other while the other
// direction keeps flowing.
func TestConformance_HalfCloseAndBytes(t *testing.T) {
	for _, tr := range allTransports {
		t.Run(tr, func(t *testing.T) {
			p := newPair(t, tr)
			upClient, upServer := tunnel.TCPPair(t) // upServer plays the cache
			results := make(chan tunnel.RelayResult, 1)
			go serveRelay(t, p.server, func() net.Conn { return upClient }, results)

			st, err := p.client.OpenStream(context.Background(), tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:1"})
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
			select {
			case res := <-results:
				if res.Err != nil || res.StreamToConn != int64(len(payload)) || res.ConnToStream != int64(len(reply)) {
					t.Fatalf("relay result %+v", res)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("relay did not end after both sides closed")
			}
		})
	}
}

// TestConformance_RefusalAndEarlyData: a refused stream surfaces as a
// StatusError on the client's first read.
func TestConformance_Refusal(t *testing.T) {
	for _, tr := range allTransports {
		t.Run(tr, func(t *testing.T) {
			p := newPair(t, tr)
			go func() {
				in, err := p.server.AcceptStream(context.Background())
				if err != nil {
					return
				}
				req, err := in.Request(time.Now().Add(5 * time.Second))
				if err != nil || req.Node != "169.254.169.254:80" {
					in.Reject(tunnel.StatusBadRequest, "unexpected")
					return
				}
				in.Reject(tunnel.StatusUnknownNode, "not a node of any target")
			}()
			st, err := p.client.OpenStream(context.Background(), tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "169.254.169.254:80"})
			var se *tunnel.StatusError
			if err == nil {
				_, _ = st.Write([]byte("early"))
				_, err = st.Read(make([]byte, 8))
				st.Close()
			}
			if !errors.As(err, &se) || se.Code != tunnel.StatusUnknownNode || se.Message != "not a node of any target" {
				t.Fatalf("got %v, want StatusError unknown node", err)
			}
		})
	}
}

// TestConformance_UpstreamReset: when the cache resets its connection the
// relay ends with an error and the client's stream ends too.
func TestConformance_UpstreamReset(t *testing.T) {
	for _, tr := range allTransports {
		t.Run(tr, func(t *testing.T) {
			p := newPair(t, tr)
			upClient, upServer := tunnel.TCPPair(t)
			results := make(chan tunnel.RelayResult, 1)
			go serveRelay(t, p.server, func() net.Conn { return upClient }, results)
			st, err := p.client.OpenStream(context.Background(), tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:1"})
			if err != nil {
				t.Fatal(err)
			}
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
			_, err = io.ReadAll(st)
			if errors.Is(err, errDeadline) {
				t.Fatal("client stream did not end after the upstream reset")
			}
			select {
			case res := <-results:
				if res.Err == nil {
					t.Fatalf("relay reported a clean end after a reset: %+v", res)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("relay did not end after the upstream reset")
			}
			st.Close()
		})
	}
}

var errDeadline = errors.New("deadline")

// TestConformance_IdleTimeout: a relay that moves nothing is cut.
func TestConformance_IdleTimeout(t *testing.T) {
	for _, tr := range allTransports {
		t.Run(tr, func(t *testing.T) {
			p := newPair(t, tr)
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
				results <- tunnel.Relay(context.Background(), upClient, st, 200*time.Millisecond)
			}()
			st, err := p.client.OpenStream(context.Background(), tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:1"})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			_, _ = st.Write([]byte("x"))
			select {
			case res := <-results:
				if !res.Idle {
					t.Fatalf("relay ended without the idle flag: %+v", res)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("idle relay was not cut")
			}
		})
	}
}

// TestConformance_ManyStreams: concurrent streams on one session stay
// separate.
func TestConformance_ManyStreams(t *testing.T) {
	for _, tr := range allTransports {
		t.Run(tr, func(t *testing.T) {
			p := newPair(t, tr)
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
					node := net.JoinHostPort("10.0.0.1", string(rune('0'+i%10)))
					st, err := p.client.OpenStream(context.Background(), tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: node})
					if err != nil {
						errs <- err
						return
					}
					defer st.Close()
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
}

// TestConformance_RejectReturnsWhenGone: Reject returns once the transport
// has freed the refused stream, so the gateway can count it until then.
// QUIC (FIN + STOP_SENDING, the client stack resets) and SSH (open
// failure) free it at once, with the client holding the stream open and
// 256 KiB of early payload behind the header. yamux cannot reset a stream:
// Reject drains it until the client closes it, and a client that holds it
// open for RejectLinger loses its session.
func TestConformance_RejectReturnsWhenGone(t *testing.T) {
	const soon = time.Second // "at once", with room for a loaded machine
	for _, tr := range allTransports {
		for _, clientCloses := range []bool{true, false} {
			name := tr + "/client_holds"
			if clientCloses {
				name = tr + "/client_closes"
			}
			t.Run(name, func(t *testing.T) {
				if tr == "tls" && !clientCloses && testing.Short() {
					t.Skip("waits RejectLinger")
				}
				p := newPair(t, tr)
				returned := make(chan time.Time, 1)
				go func() {
					in, err := p.server.AcceptStream(context.Background())
					if err != nil {
						return
					}
					if _, err := in.Request(time.Now().Add(5 * time.Second)); err != nil {
						return
					}
					in.Reject(tunnel.StatusUnknownNode, "no")
					returned <- time.Now()
				}()
				st, err := p.client.OpenStream(context.Background(), tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:1"})
				if err != nil {
					t.Fatal(err)
				}
				_ = st.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = st.Write(make([]byte, 256<<10))
				var se *tunnel.StatusError
				if _, err := st.Read(make([]byte, 1)); !errors.As(err, &se) {
					t.Fatalf("read: %v, want the refusal", err)
				}
				refusedAt := time.Now()
				if tr == "tls" {
					select {
					case <-returned:
						t.Fatal("yamux: Reject returned while the client still holds the stream open")
					case <-time.After(300 * time.Millisecond):
					}
				}
				if clientCloses {
					st.Close()
				}
				limit := soon
				if tr == "tls" && !clientCloses {
					limit = tunnel.RejectLinger + soon
				}
				select {
				case at := <-returned:
					t.Logf("Reject returned %s after the refusal was read", at.Sub(refusedAt).Round(time.Millisecond))
				case <-time.After(limit):
					t.Fatalf("Reject did not return within %s", limit)
				}
				if tr == "tls" && !clientCloses {
					select {
					case <-p.server.Done():
					case <-time.After(soon):
						t.Fatal("yamux: the session of a client that holds a refused stream open was not closed")
					}
				}
			})
		}
	}
}
