package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/tunnel"
)

// helloSession opens an authenticated-to-be session to a gateway process
// and its control stream, without the client package (which refuses more
// than control.MaxHelloTargets targets itself), and returns a function
// that sends a Hello naming targets, signed by k, and reads the Welcome.
func helloSession(ctx context.Context, t *testing.T, g *gatewayProc, transport string, k key) (tunnel.Session, tunnel.Stream, func(targets []string) *control.Welcome) {
	t.Helper()
	signer := loadTestSigner(t, k.Path)
	var (
		s   tunnel.Session
		err error
	)
	if transport == "ssh" {
		s, err = tunnel.DialSSH(ctx, g.SSHAddr, &ssh.ClientConfig{
			User: "cache", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
			HostKeyCallback: ssh.FixedHostKey(g.HostKey),
		}, tunnel.DefaultSSHConfig())
	} else {
		s, err = attackerSession(ctx, g, transport, "")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctrl, err := s.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindControl, Target: "cache"})
	if err != nil {
		t.Fatal(err)
	}
	return s, ctrl, func(targets []string) *control.Welcome {
		t.Helper()
		h := &control.Hello{Client: "test", Target: targets[0], Targets: targets}
		if transport != "ssh" {
			sig, err := auth.SignBinding(signer, s.Binding())
			if err != nil {
				t.Fatal(err)
			}
			h.PublicKey = signer.PublicKey().Marshal()
			h.SigFormat, h.SigBlob, h.SigRest = sig.Format, sig.Blob, sig.Rest
		}
		_ = ctrl.SetDeadline(time.Now().Add(10 * time.Second))
		defer ctrl.SetDeadline(time.Time{})
		if err := control.WriteJSON(ctrl, control.FrameHello, h); err != nil {
			t.Fatalf("write hello: %v", err)
		}
		typ, payload, err := control.ReadFrame(ctrl)
		if err != nil || typ != control.FrameWelcome {
			t.Fatalf("read welcome: frame %d, %v", typ, err)
		}
		var w control.Welcome
		if err := json.Unmarshal(payload, &w); err != nil {
			t.Fatalf("decode welcome: %v", err)
		}
		return &w
	}
}

// TestHello_TargetsAndFramesBounded (issue 10, finding 7 and the bounds
// of SECURITY.md), against a gateway process on quic, tls and ssh, with a
// raw client (the cachetun client refuses these itself, so only a raw one
// reaches the gateway's checks):
//   - a Hello of an authorized key naming 65 targets (MaxHelloTargets is
//     64) is refused with code protocol and the bound, and no session
//     starts; one naming 64 (the same target, deduplicated) is welcomed;
//   - after that Welcome, a control frame header declaring 1 MiB (the
//     limit is 64 KiB) ends the session within 2 s, with the log line.
func TestHello_TargetsAndFramesBounded(t *testing.T) {
	const endBound = 2 * time.Second
	forEachTransport(t, func(t *testing.T, transport string) {
		k := newKey(t, "bounded")
		g := startGatewayProc(t, gatewayProcOpts{
			Targets:    map[string]string{"cache": `{type: tcp, nodes: ["127.0.0.1:9"]}`},
			Authorized: []string{k.Line},
		})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()

		many := make([]string, control.MaxHelloTargets+1)
		for i := range many {
			many[i] = fmt.Sprintf("t%d", i)
		}
		many[0] = "cache"
		_, _, hello := helloSession(ctx, t, g, transport, k)
		w := hello(many)
		if w.OK || w.Code != control.CodeProtocol || !strings.Contains(w.Error, fmt.Sprintf("hello names %d targets, at most %d", len(many), control.MaxHelloTargets)) {
			t.Fatalf("hello naming %d targets: %+v, want a refusal with code protocol naming the bound", len(many), w)
		}
		g.WaitLog(t, "too many targets requested", 5*time.Second)

		s, ctrl, hello := helloSession(ctx, t, g, transport, k)
		same := make([]string, control.MaxHelloTargets)
		for i := range same {
			same[i] = "cache"
		}
		if w := hello(same); !w.OK {
			t.Fatalf("hello naming %d targets (all one): %+v, want welcomed", len(same), w)
		}
		start := time.Now()
		// 1 MiB, no body. On tls the Write may return the session's end
		// already: the gateway can close it before yamux reports the
		// write done.
		_, _ = ctrl.Write([]byte{byte(control.FramePing), 0, 0x10, 0, 0})
		select {
		case <-s.Done():
		case <-time.After(endBound):
			// On a transport whose session outlives its control stream
			// for a moment, the stream at least must be gone.
			_ = ctrl.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			_, err := io.Copy(io.Discard, ctrl)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("a 1 MiB control frame header after auth did not end the session within %s", endBound)
			}
		}
		t.Logf("%s: 65-target hello refused (%q); 1 MiB frame header after auth ended the session in %s (bound %s)",
			transport, w.Error, time.Since(start).Round(time.Millisecond), endBound)
		g.WaitLog(t, "control frame too large", 5*time.Second)
	})
}
