package tunnel_test

import (
	"bytes"
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachetun/cachetun/tunnel"
)

// TestGate_NothingBeforeAuthentication: before the server calls
// Authenticated, only the first stream the client opens (the control
// stream) reaches the server. The second one (the early stream behind a
// Hello) arrives after Authenticated with its bytes intact: on TLS+yamux
// its frames stay unread in the socket, on QUIC the gateway buffers them
// (at most tunnel.MaxEarlyBytes, see tunnel.EarlyHold). On QUIC a third stream opened before authentication
// is reset, so the client's write fails. Streams opened after
// Authenticated work on both.
func TestGate_NothingBeforeAuthentication(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		if _, ok := p.server.(tunnel.Gated); !ok {
			t.Skip("ssh: the SSH handshake authenticates the client; no session exists before")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctrl, sctrl := gateControlStream(ctx, t, p)

		// From now on every stream the server accepts is recorded with
		// whether Authenticated had been called by then.
		var authed atomic.Bool
		acc := make(chan gateAccepted, 4)
		go func() {
			for {
				in, err := p.server.AcceptStream(ctx)
				if err != nil {
					return
				}
				acc <- gateAccepted{in, !authed.Load()}
			}
		}()

		// A second stream before authentication, 256 KiB on it (QUIC:
		// 60 KiB, under tunnel.MaxEarlyBytes with the header).
		early, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:1"})
		if err != nil {
			t.Fatal(err)
		}
		defer early.Abort()
		payload := bytes.Repeat([]byte("x"), 256<<10)
		if p.transport == "quic" {
			payload = payload[:60<<10]
		}
		werr := make(chan error, 1)
		go func() {
			_ = early.SetWriteDeadline(time.Now().Add(3 * time.Second))
			_, err := early.Write(payload)
			werr <- err
		}()
		// The control stream still works both ways meanwhile.
		if _, err := sctrl.Write([]byte("welcome")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 7)
		_ = ctrl.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(ctrl, buf); err != nil || string(buf) != "welcome" {
			t.Fatalf("control stream to the client before auth: %q %v", buf, err)
		}
		if p.transport == "quic" {
			if err := <-werr; err != nil {
				t.Fatalf("quic: writing 60 KiB on the stream held before authentication: %v", err)
			}
			third, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:3"})
			if err != nil {
				t.Fatal(err)
			}
			defer third.Abort()
			_ = third.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := third.Write(make([]byte, 256<<10)); err == nil {
				t.Fatal("quic: writing 256 KiB on a second stream opened before authentication succeeded; want a reset")
			}
			if _, err := third.Read(make([]byte, 1)); !tunnel.HeldStreamDropped(err) {
				t.Fatalf("quic: reading a second stream opened before authentication: %v, want the gateway's refusal", err)
			}
		}

		authed.Store(true)
		p.server.(tunnel.Gated).Authenticated()
		late, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:2"})
		if err != nil {
			t.Fatal(err)
		}
		defer late.Close()
		_ = late.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := late.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		// On TLS the held stream n:1 now arrives, its bytes intact: they
		// waited in the socket, not in the gateway.
		echo := gateAfterAuth(t, p, acc, payload)
		defer echo.Close()
		buf = make([]byte, 4)
		if _, err := io.ReadFull(late, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("stream after authentication, back at the client: %q %v", buf, err)
		}
	}, unauthenticated())
}

// gateAccepted is a stream the server accepted, and whether it did so
// before Authenticated.
type gateAccepted struct {
	in         tunnel.Incoming
	beforeAuth bool
}

// gateControlStream opens the control stream of p, sends "hello" on it
// before authentication and checks that the server accepts it and reads
// the bytes. It returns the client's and the server's end.
func gateControlStream(ctx context.Context, t *testing.T, p pair) (ctrl, sctrl tunnel.Stream) {
	t.Helper()
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
	sctrl, _ = in.Accept()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(sctrl, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("control stream payload before auth: %q %v", buf, err)
	}
	return ctrl, sctrl
}

// gateAfterAuth takes the streams accepted after authentication from acc
// until the one to n:2 (the late stream), which it answers by echoing its
// "ping" and returns, still open. The held stream n:1 must bring payload
// intact.
func gateAfterAuth(t *testing.T, p pair, acc <-chan gateAccepted, payload []byte) tunnel.Stream {
	t.Helper()
	for seen := 0; seen < 2; seen++ {
		a := within(t, acc, 10*time.Second, "a stream accepted after authentication")
		if a.beforeAuth {
			t.Fatal("a second stream reached the server before authentication")
		}
		req, err := a.in.Request(time.Now().Add(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		st, _ := a.in.Accept()
		_ = st.SetDeadline(time.Now().Add(5 * time.Second))
		if req.Node == "n:3" {
			t.Fatal("quic: the stream reset before authentication was accepted after it")
		}
		if req.Node == "n:1" {
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
		return st
	}
	t.Fatal("no stream to n:2 among the streams accepted after authentication")
	return nil
}

// TestGate_ControlStreamBounded: yamux widens the control stream's window
// to 4 MiB when the server accepts it; before authentication a TLS
// client may still send at most tunnel.MaxPreAuthControlBytes (512 KiB)
// on it, and its session ends beyond.
func TestGate_ControlStreamBounded(t *testing.T) {
	tunnel.VerifyNoLeaks(t)
	p := newPairWith(t, "tls", pairOptions{unauthenticated: true})
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
	within(t, p.server.Done(), 10*time.Second, "2 MiB on the control stream before authentication ended the server session")
}

// TestGate_DropEarly: after DropEarly (the gateway refused a Hello) a
// stream held before authentication never reaches the server, while one
// opened after Authenticated does. The TLS gate discards the held
// stream's frames instead of waiting, so what the client sends on the
// control stream behind it (a next Hello) is read at once; QUIC resets
// the held stream, and the client reads the refusal.
func TestGate_DropEarly(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		d, ok := p.server.(tunnel.EarlyDropper)
		if !ok {
			t.Skip("ssh: no session exists before the SSH handshake authenticated the client")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctrl, sctrl := gateControlStream(ctx, t, p)
		acc := make(chan tunnel.Incoming, 4)
		go func() {
			for {
				in, err := p.server.AcceptStream(ctx)
				if err != nil {
					return
				}
				acc <- in
			}
		}()
		early, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:1"})
		if err != nil {
			t.Fatal(err)
		}
		defer early.Abort()
		if _, err := early.Write(bytes.Repeat([]byte("x"), 60<<10)); err != nil {
			t.Fatal(err)
		}
		if _, err := ctrl.Write([]byte("again")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if p.transport == "tls" {
			// Held: the bytes behind the early stream do not arrive.
			_ = sctrl.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if n, err := io.ReadFull(sctrl, buf); err == nil {
				t.Fatalf("control bytes behind a held stream arrived before DropEarly: %q", buf[:n])
			}
		}
		d.DropEarly()
		_ = sctrl.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(sctrl, buf); err != nil || string(buf) != "again" {
			t.Fatalf("control stream after DropEarly: %q %v", buf, err)
		}
		if p.transport == "quic" {
			_ = early.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := early.Read(make([]byte, 1)); !tunnel.HeldStreamDropped(err) {
				t.Fatalf("quic: the held stream after DropEarly reads %v, want the gateway's refusal", err)
			}
		}
		p.server.(tunnel.Gated).Authenticated()
		defer openLate(ctx, t, p).Close()
		in := within(t, acc, 5*time.Second, "the stream opened after authentication")
		req, err := in.Request(time.Now().Add(5 * time.Second))
		if err != nil || req.Node != "n:2" {
			t.Fatalf("first stream the server accepted: %+v %v; want n:2 (n:1 was dropped)", req, err)
		}
	}, unauthenticated())
}

// openLate opens the stream to n:2 after authentication and writes
// "ping" on it.
func openLate(ctx context.Context, t *testing.T, p pair) tunnel.Stream {
	t.Helper()
	late, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := late.Write([]byte("ping")); err != nil {
		late.Close()
		t.Fatal(err)
	}
	return late
}

// TestGate_QUICEarlyHoldExpires: a QUIC gateway holds the stream behind
// the control stream for at most tunnel.EarlyHold (3 s); a client
// that has not authenticated by then reads the refusal, within 2 s more,
// and the stream is never served, even after a later Authenticated. The
// control stream keeps working.
func TestGate_QUICEarlyHoldExpires(t *testing.T) {
	p := newPairWith(t, "quic", pairOptions{unauthenticated: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ctrl, sctrl := gateControlStream(ctx, t, p)
	early, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer early.Abort()
	start := time.Now()
	if _, err := early.Write(bytes.Repeat([]byte("x"), 60<<10)); err != nil {
		t.Fatal(err)
	}
	_ = early.SetReadDeadline(time.Now().Add(tunnel.EarlyHold + 5*time.Second))
	_, err = early.Read(make([]byte, 1))
	took := time.Since(start)
	if !tunnel.HeldStreamDropped(err) {
		t.Fatalf("the held stream read %v after %v, want the gateway's refusal", err, took)
	}
	if took < tunnel.EarlyHold-100*time.Millisecond || took > tunnel.EarlyHold+2*time.Second {
		t.Fatalf("the held stream was dropped after %v, want %v (+ at most 2 s)", took, tunnel.EarlyHold)
	}
	p.server.(tunnel.Gated).Authenticated()
	defer openLate(ctx, t, p).Close()
	in, err := p.server.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if req, err := in.Request(time.Now().Add(5 * time.Second)); err != nil || req.Node != "n:2" {
		t.Fatalf("first stream accepted after authentication: %+v %v; want n:2 (n:1 was dropped)", req, err)
	}
	if _, err := sctrl.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	_ = ctrl.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(ctrl, buf); err != nil {
		t.Fatalf("control stream after the hold ran out: %v", err)
	}
}

// TestGate_QUICEarlyStreamBounded: a QUIC client that sends more than
// tunnel.MaxEarlyBytes (64 KiB) on its held stream before authenticating
// reads the refusal at once (within 2 s, far before tunnel.EarlyHold), in
// 130-byte writes as in one: the gateway buffers no more than that of it.
func TestGate_QUICEarlyStreamBounded(t *testing.T) {
	for _, chunk := range []int{130, 1 << 20} {
		p := newPairWith(t, "quic", pairOptions{unauthenticated: true})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		gateControlStream(ctx, t, p)
		early, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "t", Node: "n:1"})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		go func() {
			_ = early.SetWriteDeadline(start.Add(10 * time.Second))
			data := make([]byte, tunnel.MaxEarlyBytes+4096)
			for off := 0; off < len(data); off += chunk {
				if _, err := early.Write(data[off:min(off+chunk, len(data))]); err != nil {
					return
				}
			}
		}()
		_ = early.SetReadDeadline(start.Add(10 * time.Second))
		_, err = early.Read(make([]byte, 1))
		took := time.Since(start)
		early.Abort()
		if !tunnel.HeldStreamDropped(err) {
			t.Fatalf("%d-byte writes: the held stream read %v after %v, want the gateway's refusal", chunk, err, took)
		}
		if took > 2*time.Second {
			t.Fatalf("%d-byte writes: %d bytes before authentication were refused after %v, bound 2 s", chunk, tunnel.MaxEarlyBytes+4096, took)
		}
		t.Logf("%d-byte writes: refused after %v", chunk, took.Round(time.Millisecond))
	}
}
