package client

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/certs"
	"github.com/cachetun/cachetun/tunnel"
)

// TestServesEarly: a client sends a stream behind its Hello on QUIC only
// to a gateway that chose certs.ALPNEarly in the handshake; an older
// gateway (ALPN cachetun/1 only) resets such streams, so the client waits
// for its Welcome. Real QUIC handshakes on loopback.
func TestServesEarly(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		protos []string
		want   bool
	}{
		{"this gateway", nil, true},
		{"older gateway", []string{certs.ALPN}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sconf, err := certs.ServerTLSConfig(priv, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.protos != nil {
				sconf.NextProtos = tc.protos
			}
			ln, err := tunnel.ListenQUIC("127.0.0.1:0", sconf, tunnel.DefaultQUICConfig())
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			accepted := make(chan tunnel.Session, 1)
			go func() {
				s, err := ln.Accept(ctx)
				if err == nil {
					accepted <- s
				}
				close(accepted)
			}()
			cs, err := tunnel.DialQUIC(ctx, ln.Addr().String(), certs.ClientTLSConfig(func(ssh.PublicKey) error { return nil }), tunnel.DefaultQUICConfig())
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			if ss, ok := <-accepted; ok {
				defer ss.Close()
			}
			if got := servesEarly(cs); got != tc.want {
				t.Fatalf("servesEarly = %v, want %v", got, tc.want)
			}
		})
	}
}
