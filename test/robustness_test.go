package test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/certs"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/test/testenv"
	"github.com/cachetun/cachetun/tunnel"
)

// rawSession opens an unauthenticated session to the gateway, as a
// hostile or broken client would.
func rawSession(t *testing.T, g *gateway, transport string) tunnel.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conf := certs.ClientTLSConfig(func(ssh.PublicKey) error { return nil })
	var (
		s   tunnel.Session
		err error
	)
	if transport == "quic" {
		s, err = tunnel.DialQUIC(ctx, g.Addr, conf, tunnel.DefaultQUICConfig())
	} else {
		s, err = tunnel.DialTLS(ctx, g.Addr, conf, tunnel.DefaultTLSConfig())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestRobustness_MalformedInput: garbage where a Hello, a header or a TLS
// handshake belongs is refused and logged; the cache sees nothing and the
// gateway keeps serving good clients.
func TestRobustness_MalformedInput(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "good")
	g := startGateway(t, redisTarget(r), []string{k.Line})
	before := r.TotalConnections(t)

	for _, transport := range []string{"quic", "tls"} {
		t.Run(transport+"/garbage_hello", func(t *testing.T) {
			s := rawSession(t, g, transport)
			ctrl, err := s.OpenStream(context.Background(), tunnel.OpenRequest{Kind: tunnel.KindControl, Target: "cache"})
			if err != nil {
				t.Fatal(err)
			}
			_ = control.WriteFrame(ctrl, control.FrameHello, []byte("{not json"))
			_ = ctrl.SetReadDeadline(time.Now().Add(10 * time.Second))
			typ, payload, err := control.ReadFrame(ctrl)
			if err != nil {
				t.Fatalf("no answer to a malformed hello: %v", err)
			}
			var w control.Welcome
			if typ != control.FrameWelcome || json.Unmarshal(payload, &w) != nil || w.OK || w.Code != control.CodeProtocol {
				t.Fatalf("answer to a malformed hello: type %d %s", typ, payload)
			}
		})
		t.Run(transport+"/forged_signature", func(t *testing.T) {
			s := rawSession(t, g, transport)
			ctrl, err := s.OpenStream(context.Background(), tunnel.OpenRequest{Kind: tunnel.KindControl, Target: "cache"})
			if err != nil {
				t.Fatal(err)
			}
			// The right public key, but a signature over another session.
			_ = control.WriteJSON(ctrl, control.FrameHello, &control.Hello{Target: "cache", PublicKey: k.Pub.Marshal(),
				SigFormat: ssh.KeyAlgoED25519, SigBlob: make([]byte, 64)})
			_ = ctrl.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, payload, err := control.ReadFrame(ctrl)
			if err != nil {
				t.Fatalf("no answer to a forged signature: %v", err)
			}
			var w control.Welcome
			if json.Unmarshal(payload, &w) != nil || w.OK || w.Code != control.CodeBadSignature {
				t.Fatalf("answer to a forged signature: %s", payload)
			}
		})
		t.Run(transport+"/proxy_stream_before_auth", func(t *testing.T) {
			s := rawSession(t, g, transport)
			st, err := s.OpenStream(context.Background(), tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "cache", Node: r.Addr})
			if err != nil {
				t.Fatal(err)
			}
			_, _ = st.Write([]byte("*1\r\n$8\r\nFLUSHALL\r\n"))
			_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = st.Read(make([]byte, 1))
			var se *tunnel.StatusError
			if !errors.As(err, &se) || se.Code != tunnel.StatusDenied {
				t.Fatalf("proxy stream before auth: got %v, want denied", err)
			}
		})
	}
	t.Run("tls/not_tls", func(t *testing.T) {
		c, err := net.Dial("tcp", g.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		if _, err := io.ReadAll(c); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
			t.Fatalf("gateway kept a non-TLS connection open: %v", err)
		}
	})
	t.Run("tls/wrong_alpn", func(t *testing.T) {
		c, err := tls.Dial("tcp", g.Addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13})
		if err == nil {
			c.Close()
			// crypto/tls servers may accept a client without a common ALPN;
			// what matters is that nothing is served: no yamux answer.
		}
	})
	if after := r.TotalConnections(t); after != before {
		t.Fatalf("redis saw %d connections from malformed clients", after-before)
	}
	// The gateway still serves a good client.
	c := mustConnect(t, g, "tls", "cache", k)
	if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
		t.Fatalf("good client after the garbage: %q", got)
	}
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe)
}

// TestRobustness_ClientVanishes: a client that disappears mid-stream
// (process killed) leaves no connection open on the cache.
func TestRobustness_ClientVanishes(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		r := testenv.StartRedis(t)
		k := newKey(t, "flaky")
		g := startGateway(t, redisTarget(r), []string{k.Line})
		base := r.ConnectedClients(t)
		c := mustConnect(t, g, transport, "cache", k)
		conn, err := net.Dial("tcp", c.Local(t, r.Addr))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// A blocking command holds the upstream connection open.
		if _, err := conn.Write([]byte("*3\r\n$5\r\nBLPOP\r\n$5\r\nqueue\r\n$1\r\n0\r\n")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the BLPOP to reach redis", func() bool { return r.ConnectedClients(t) == base+1 })

		// The client's session vanishes without a goodbye.
		c.cancel()
		waitFor(t, 20*time.Second, "redis to drop the tunnelled connection", func() bool { return r.ConnectedClients(t) == base })
		waitFor(t, 20*time.Second, "the gateway to end the vanished client's session", func() bool {
			return gatewayMetric(t, g, "cachetun_sessions", nil) == 0
		})
	})
}
