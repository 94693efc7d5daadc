package tunnel_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/cachetun/cachetun/tunnel"
)

// TestGate_NothingBeforeAuthentication: before the server calls
// Authenticated, only the first stream the client opens (the control
// stream) reaches the server. On TLS+yamux the frames of a second stream
// stay unread in the socket (they arrive after Authenticated); on QUIC
// the second stream is reset, so the client's write fails. Streams
// opened after Authenticated work on both.
func TestGate_NothingBeforeAuthentication(t *testing.T) {
	for _, tr := range []string{"quic", "tls"} {
		t.Run(tr, func(t *testing.T) {
			p := newPairAuth(t, tr, false)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ctrl, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindControl, Target: "t"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ctrl.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			in, err := p.server.AcceptStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if req, err := in.Request(time.Now().Add(5 * time.Second)); err != nil || req.Kind != tunnel.KindControl {
				t.Fatalf("control stream: %+v %v", req, err)
			}
			sctrl, _ := in.Accept()
			buf := make([]byte, 5)
			if _, err := io.ReadFull(sctrl, buf); err != nil || string(buf) != "hello" {
				t.Fatalf("control stream payload before auth: %q %v", buf, err)
			}

			// A second stream before authentication, 256 KiB on it.
			early, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:1"})
			if err != nil {
				t.Fatal(err)
			}
			payload := bytes.Repeat([]byte("x"), 256<<10)
			werr := make(chan error, 1)
			go func() {
				_ = early.SetWriteDeadline(time.Now().Add(3 * time.Second))
				_, err := early.Write(payload)
				werr <- err
			}()
			actx, acancel := context.WithTimeout(ctx, 500*time.Millisecond)
			_, err = p.server.AcceptStream(actx)
			acancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("a second stream reached the server before authentication (err %v)", err)
			}
			// The control stream still works both ways meanwhile.
			if _, err := sctrl.Write([]byte("welcome")); err != nil {
				t.Fatal(err)
			}
			buf = make([]byte, 7)
			_ = ctrl.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(ctrl, buf); err != nil || string(buf) != "welcome" {
				t.Fatalf("control stream to the client before auth: %q %v", buf, err)
			}
			if tr == "quic" {
				if err := <-werr; err == nil {
					t.Fatal("quic: writing 256 KiB on a stream opened before authentication succeeded; want a reset")
				}
			}

			p.server.(tunnel.Gated).Authenticated()
			late, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:2"})
			if err != nil {
				t.Fatal(err)
			}
			_ = late.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := late.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			// On TLS the held stream n:1 now arrives, its bytes intact: they
			// waited in the socket, not in the gateway.
			for seen := 0; seen < 2; seen++ {
				in, err := p.server.AcceptStream(ctx)
				if err != nil {
					t.Fatal(err)
				}
				req, err := in.Request(time.Now().Add(5 * time.Second))
				if err != nil {
					t.Fatal(err)
				}
				st, _ := in.Accept()
				_ = st.SetDeadline(time.Now().Add(5 * time.Second))
				if req.Node == "n:1" {
					if tr == "quic" {
						t.Fatal("quic: the stream reset before authentication was accepted after it")
					}
					got := make([]byte, len(payload))
					if _, err := io.ReadFull(st, got); err != nil || !bytes.Equal(got, payload) {
						t.Fatalf("held stream after authentication: %v", err)
					}
					st.Close()
					continue
				}
				b := make([]byte, 4)
				if _, err := io.ReadFull(st, b); err != nil || string(b) != "ping" {
					t.Fatalf("stream after authentication: %q %v", b, err)
				}
				_, _ = st.Write(b)
				break
			}
			buf = make([]byte, 4)
			if _, err := io.ReadFull(late, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("stream after authentication, back at the client: %q %v", buf, err)
			}
			late.Close()
			early.Abort()
		})
	}
}

// TestGate_ControlStreamBounded: yamux widens the control stream's window
// to 4 MiB when the server accepts it; before authentication a TLS
// client may still send at most tunnel.MaxPreAuthControlBytes (512 KiB)
// on it, and its session ends beyond.
func TestGate_ControlStreamBounded(t *testing.T) {
	p := newPairAuth(t, "tls", false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctrl, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindControl, Target: "t"})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = ctrl.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = ctrl.Write(make([]byte, 2<<20)) // nobody reads it
	}()
	in, err := p.server.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Request(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Accept(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.server.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("2 MiB on the control stream before authentication: the server session is still up")
	}
}
