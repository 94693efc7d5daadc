package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// TLSConfig holds the tuning of the TLS+yamux transport.
type TLSConfig struct {
	HandshakeTimeout time.Duration
	KeepAlive        time.Duration
	// Window is yamux's per-stream receive window. yamux has no
	// connection-level flow control, so memory per session is at most
	// Window × MaxStreams.
	Window uint32
	// MaxStreams bounds the streams waiting to be accepted.
	MaxStreams int
	// Admission, on a server, decides which connections may start a
	// handshake; nil allows 256 handshakes at once.
	Admission Admission
	// LocalAddr, on a client, is the local IP address to dial from (as
	// ssh -b); empty lets the system choose.
	LocalAddr string
}

// DefaultTLSConfig returns the defaults; why these numbers (the 4 MiB
// window above all): BENCHMARKS.md, "What changed", change 7.
func DefaultTLSConfig() TLSConfig {
	return TLSConfig{HandshakeTimeout: 10 * time.Second, KeepAlive: 15 * time.Second, Window: 4 << 20, MaxStreams: 1024}
}

// yamuxStreamCloseTimeout is how long yamux keeps a stream we closed
// while the peer keeps its side open.
const yamuxStreamCloseTimeout = time.Minute

func (c TLSConfig) yamux() *yamux.Config {
	y := yamux.DefaultConfig()
	y.AcceptBacklog = c.MaxStreams
	y.KeepAliveInterval = c.KeepAlive
	y.ConnectionWriteTimeout = 10 * time.Second
	y.MaxStreamWindowSize = c.Window
	y.StreamOpenTimeout = 30 * time.Second
	y.StreamCloseTimeout = yamuxStreamCloseTimeout
	y.LogOutput = io.Discard
	return y
}

// ListenTLS listens on the TCP address addr for TLS 1.3 sessions with
// yamux inside. Handshakes run concurrently, each bounded by
// HandshakeTimeout, so a slow client cannot stall others.
func ListenTLS(addr string, tlsConf *tls.Config, cfg TLSConfig) (Listener, error) {
	tcp, err := net.Listen(exactNetwork("tcp", addr), addr)
	if err != nil {
		return nil, fmt.Errorf("listen tls on %q: %w", addr, err)
	}
	return newTCPListener(tcp, tlsHandshake(tlsConf, cfg), cfg.Admission), nil
}

// tlsHandshake returns the handshake of the TLS transport.
func tlsHandshake(conf *tls.Config, cfg TLSConfig) handshakeFunc {
	return func(lctx context.Context, c net.Conn) (Session, error) {
		bc := &batchConn{Conn: newFastConn(c)}
		tc := tls.Server(bc, conf)
		ctx, cancel := context.WithTimeout(lctx, cfg.HandshakeTimeout)
		defer cancel()
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, err
		}
		bc.startFlusher()
		gate := newPreAuthGate(&frameConn{Conn: tc, raw: bc})
		ys, err := yamux.Server(gate, cfg.yamux())
		if err != nil {
			tc.Close() // stops the flusher
			return nil, err
		}
		s, err := newYamuxSession(ys, tc)
		if err != nil {
			return nil, err
		}
		s.gate = gate
		return s, nil
	}
}

// DialTLS opens a TLS+yamux session to addr.
func DialTLS(ctx context.Context, addr string, tlsConf *tls.Config, cfg TLSConfig) (Session, error) {
	d, err := tcpDialer(cfg.LocalAddr)
	if err != nil {
		return nil, err
	}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	setTCPOptions(c)
	bc := &batchConn{Conn: newFastConn(c)} // see tlsbatch.go
	tc := tls.Client(bc, tlsConf)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	bc.startFlusher()
	ys, err := yamux.Client(&frameConn{Conn: tc, raw: bc}, cfg.yamux())
	if err != nil {
		tc.Close()
		return nil, err
	}
	return newYamuxSession(ys, tc)
}

type yamuxSession struct {
	s       *yamux.Session
	binding []byte
	gate    *preAuthGate // server only: see gate.go
}

// Authenticated lets the frames of every stream through (Gated).
func (y *yamuxSession) Authenticated() {
	if y.gate != nil {
		y.gate.Authenticated()
	}
}

// DropEarly discards the streams held back before authentication (see
// preAuthGate.DropEarly); server only.
func (y *yamuxSession) DropEarly() {
	if y.gate != nil {
		y.gate.DropEarly()
	}
}

func newYamuxSession(s *yamux.Session, tc *tls.Conn) (*yamuxSession, error) {
	cs := tc.ConnectionState()
	b, err := cs.ExportKeyingMaterial(BindingLabel, nil, 32)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("export channel binding: %w", err)
	}
	return &yamuxSession{s: s, binding: b}, nil
}

func (y *yamuxSession) OpenStream(ctx context.Context, req OpenRequest) (Stream, error) {
	type result struct {
		s   *yamux.Stream
		err error
	}
	// OpenStream blocks while AcceptBacklog streams are unacknowledged.
	ch := make(chan result, 1)
	Go(func() { // yamux's send path grows a new goroutine's stack: see Go
		s, err := y.s.OpenStream()
		ch <- result{s, err}
	})
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		return newClientStream(&yamuxStream{s: r.s}, req)
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.s != nil {
				r.s.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func (y *yamuxSession) AcceptStream(ctx context.Context) (Incoming, error) {
	s, err := y.s.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, err
	}
	return &framedIncoming{s: &yamuxStream{s: s}}, nil
}

func (y *yamuxSession) Binding() []byte       { return y.binding }
func (y *yamuxSession) Transport() string     { return "tls" }
func (y *yamuxSession) LocalAddr() net.Addr   { return y.s.LocalAddr() }
func (y *yamuxSession) RemoteAddr() net.Addr  { return y.s.RemoteAddr() }
func (y *yamuxSession) Done() <-chan struct{} { return y.s.CloseChan() }
func (y *yamuxSession) Close() error          { return y.s.Close() }

// yamuxStream adapts *yamux.Stream. yamux's Close is a half-close (FIN)
// and it has no stream reset: Abort closes and the peer sees a clean end,
// which the relay's other direction then follows. A stream is freed when
// both sides have closed, or after StreamCloseTimeout.
type yamuxStream struct {
	s    *yamux.Stream
	once sync.Once
	// closed is set by Close and Abort. yamux's Close is only a FIN and
	// leaves reading open; Stream promises that Read fails after Close
	// (and that a blocked Read returns), so Read checks it here.
	closed atomic.Bool
	wd     atomic.Int64 // the write deadline in Unix ns, 0 for none
}

func (y *yamuxStream) Read(p []byte) (int, error) {
	if y.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := y.s.Read(p)
	if err != nil && y.closed.Load() {
		return n, net.ErrClosed
	}
	return n, yamuxDeadline(err)
}

// yamuxDeadline turns yamux's deadline error into os.ErrDeadlineExceeded,
// as Stream promises: yamux v0.1.2's ErrTimeout is a timeout net.Error but
// does not match os.ErrDeadlineExceeded with errors.Is.
func yamuxDeadline(err error) error {
	if errors.Is(err, yamux.ErrTimeout) {
		return os.ErrDeadlineExceeded
	}
	return err
}

// Write closes the whole session on a connection write timeout: yamux
// v0.1.2 can otherwise leave the peer's reader hanging (GHSA-29qp-crvh-w22m).
func (y *yamuxStream) Write(p []byte) (int, error) {
	// yamux checks the write deadline only when Write must wait for
	// window; Stream promises that a passed deadline fails every Write.
	if wd := y.wd.Load(); wd != 0 && time.Now().UnixNano() >= wd {
		return 0, os.ErrDeadlineExceeded
	}
	n, err := y.s.Write(p)
	if errors.Is(err, yamux.ErrConnectionWriteTimeout) {
		y.s.Session().Close()
	}
	return n, yamuxDeadline(err)
}

func (y *yamuxStream) SetDeadline(t time.Time) error {
	y.storeWriteDeadline(t)
	return y.s.SetDeadline(t)
}

func (y *yamuxStream) SetReadDeadline(t time.Time) error { return y.s.SetReadDeadline(t) }

func (y *yamuxStream) SetWriteDeadline(t time.Time) error {
	y.storeWriteDeadline(t)
	return y.s.SetWriteDeadline(t)
}

func (y *yamuxStream) storeWriteDeadline(t time.Time) {
	if t.IsZero() {
		y.wd.Store(0)
	} else {
		y.wd.Store(t.UnixNano())
	}
}

func (y *yamuxStream) CloseWrite() error {
	var err error
	y.once.Do(func() { err = y.s.Close() })
	return err
}

func (y *yamuxStream) Close() error {
	err := y.CloseWrite()
	if !y.closed.Swap(true) {
		// Release a Read blocked in yamux (drain, for Reject and Release,
		// reads the yamux stream itself and sets its own deadline).
		_ = y.s.SetReadDeadline(time.Now())
	}
	return err
}

// drainRefused frees a refused stream that Close already half-closed.
// yamux v0.1.2 has no public stream reset: a stream we closed stays in the
// session, and keeps whatever the peer sends in its receive buffer (up to
// Window), until the peer closes its side too or StreamCloseTimeout (a
// minute) passes. So the refused stream is read and discarded here, its
// buffer dropped after every read (Shrink), until the peer's FIN or reset
// frees it in yamux (Read returns io.EOF or an error). Reading grants the
// peer window again, so during the drain it costs the CPU of a discard,
// but no memory beyond one frame. A peer that does not close a refused
// stream within linger is not a cachetun client (that closes a refused
// stream at once): its session is closed, which frees every stream of it.
func (y *yamuxStream) drainRefused(linger time.Duration) {
	if !y.drain(linger) {
		_ = y.s.Session().Close()
	}
}

// release is drainRefused for a stream that was served (see Release): the
// peer may keep its side open as long as yamux lets it, StreamCloseTimeout,
// after which yamux frees the stream itself (Read returns io.EOF).
func (y *yamuxStream) release() {
	_ = y.drain(yamuxStreamCloseTimeout + 5*time.Second)
}

// drain reads and discards until the stream is gone, at most for linger;
// it reports whether the stream is gone.
func (y *yamuxStream) drain(linger time.Duration) bool {
	_ = y.s.SetReadDeadline(time.Now().Add(linger))
	var scratch [4 << 10]byte
	for {
		_, err := y.s.Read(scratch[:])
		y.s.Shrink()
		if err != nil {
			return !errors.Is(err, yamux.ErrTimeout)
		}
	}
}

func (y *yamuxStream) Abort() {
	_ = y.CloseWrite()
	y.closed.Store(true)
	// Unblock local readers and writers at once.
	_ = y.s.SetDeadline(time.Now())
}
