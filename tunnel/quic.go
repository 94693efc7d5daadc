package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
)

// QUIC application error codes (connection level).
const (
	quicCodeNormal   quic.ApplicationErrorCode = 0
	quicCodeShutdown quic.ApplicationErrorCode = 0x100
	// stream error code used for resets
	quicStreamAbort quic.StreamErrorCode = 0x1
	quicStreamDone  quic.StreamErrorCode = 0x0
)

// QUICConfig holds the tuning of the QUIC transport.
type QUICConfig struct {
	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	KeepAlive        time.Duration
	// MaxStreams bounds the streams the peer may have open at once.
	MaxStreams int64
	// StatelessResetKey, when set, lets a restarted server reset the
	// connections of its previous incarnation at once.
	StatelessResetKey *[32]byte
	// Admission, on a server, decides which connections may start a
	// handshake (quic.Transport.ConnContext sees the source first) and
	// which must prove their address with a Retry.
	Admission Admission
	// LocalAddr, on a client, is the local IP address to dial from (as
	// ssh -b); empty lets the system choose.
	LocalAddr string
	// Logger gets a warning, at most once per 10 s per errno, when packets
	// cannot be sent for a reason the connection survives (QUICSendErrnos:
	// no route, no address, a local firewall); nil logs nothing.
	Logger *slog.Logger
	// OnSendError, when set, is called for every packet that could not be
	// sent for one of those reasons, with the errno's name. It runs on
	// quic-go's send path and must not block.
	OnSendError func(errno string)
	// OnWindowRefresh, when set, is called each time the congestion window
	// is refreshed (quicwindow.go): on a client when it switched to a new
	// path, on a server when it asked its client to.
	OnWindowRefresh func()

	// Tests only (export_test.go).
	tracer        func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace
	packetConnFor func(*net.UDPConn) net.PacketConn // replaces the wrapper
}

// DefaultQUICConfig returns the defaults; why these numbers:
// BENCHMARKS.md, "What changed", change 7.
func DefaultQUICConfig() QUICConfig {
	return QUICConfig{
		HandshakeTimeout: 5 * time.Second,
		IdleTimeout:      45 * time.Second,
		KeepAlive:        15 * time.Second,
		MaxStreams:       1024,
	}
}

func (c QUICConfig) quic() *quic.Config {
	tracer := c.tracer
	if tracer == nil && os.Getenv("QLOGDIR") != "" {
		tracer = qlog.DefaultConnectionTracer
	}
	return &quic.Config{
		HandshakeIdleTimeout:           c.HandshakeTimeout,
		MaxIdleTimeout:                 c.IdleTimeout,
		KeepAlivePeriod:                c.KeepAlive,
		MaxIncomingStreams:             c.MaxStreams,
		MaxIncomingUniStreams:          -1,
		InitialStreamReceiveWindow:     1 << 20,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 2 << 20,
		MaxConnectionReceiveWindow:     64 << 20,
		Tracer:                         tracer,
	}
}

// packetConn is what quic-go gets to send and receive on: udp, wrapped so
// that transient send errors are packet loss (quicconn.go). A client's
// conn starts passing them on, so that a dial with no network fails at
// once as before (and the client falls back or retries) rather than wait
// for the handshake timeout; DialQUIC turns it lossy once connected.
func (c QUICConfig) packetConn(udp *net.UDPConn, client bool) net.PacketConn {
	if c.packetConnFor != nil {
		return c.packetConnFor(udp)
	}
	pc := newLossyUDPConn(udp, newSendErrors(c.Logger, c.OnSendError))
	pc.lossy.Store(!client)
	return pc
}

// ListenQUIC listens on the UDP address addr. tlsConf must carry the
// server certificate and ALPN.
func ListenQUIC(addr string, tlsConf *tls.Config, cfg QUICConfig) (Listener, error) {
	network := exactNetwork("udp", addr)
	udpAddr, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		return nil, fmt.Errorf("resolve quic listen address %q: %w", addr, err)
	}
	udp, err := net.ListenUDP(network, udpAddr)
	if err != nil {
		return nil, fmt.Errorf("listen quic on %q: %w", addr, err)
	}
	tr := &quic.Transport{Conn: cfg.packetConn(udp, false)}
	if adm := cfg.Admission; adm != nil {
		tr.VerifySourceAddress = adm.RequireRetry
		tr.ConnContext = func(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
			done, err := adm.Admit(info.RemoteAddr, info.AddrVerified)
			if err != nil {
				return nil, err // refused at once: quic-go answers CONNECTION_REFUSED
			}
			a := &admitted{done: done}
			// ctx ends when the handshake fails or the connection closes;
			// Accept reports success first.
			a.stop = context.AfterFunc(ctx, func() { a.finish(errQUICHandshake) })
			return context.WithValue(ctx, admittedKey{}, a), nil
		}
	}
	if cfg.StatelessResetKey != nil {
		k := quic.StatelessResetKey(*cfg.StatelessResetKey)
		tr.StatelessResetKey = &k
	}
	ln, err := tr.Listen(tlsConf, cfg.quic())
	if err != nil {
		udp.Close()
		return nil, fmt.Errorf("listen quic on %q: %w", addr, err)
	}
	return &quicListener{tr: tr, ln: ln, udp: udp, onRefresh: cfg.OnWindowRefresh}, nil
}

type quicListener struct {
	onRefresh func() // QUICConfig.OnWindowRefresh
	tr        *quic.Transport
	ln        *quic.Listener
	udp       *net.UDPConn
	once      sync.Once
}

func (l *quicListener) Accept(ctx context.Context) (Session, error) {
	c, err := l.ln.Accept(ctx)
	if err != nil {
		if errors.Is(err, quic.ErrServerClosed) || errors.Is(err, quic.ErrTransportClosed) {
			return nil, net.ErrClosed
		}
		return nil, err
	}
	if a, ok := c.Context().Value(admittedKey{}).(*admitted); ok {
		a.finish(nil)
	}
	s, err := newQUICSession(c)
	if err != nil {
		return nil, err
	}
	s.gateUntilAuthenticated()
	s.asker = &serverRefresh{c: c, done: l.onRefresh}
	go watchWindow(c, s.writers, nil, s.asker.request, nil)
	return s, nil
}

// errQUICHandshake is reported to Admission for a QUIC connection that
// ended before its handshake completed.
var errQUICHandshake = errors.New("quic connection closed before its handshake completed")

// admitted is the Admission slot of one QUIC connection, released exactly
// once: at Accept, or when the connection ends before it.
type admitted struct {
	once sync.Once
	done func(error)
	stop func() bool
}

type admittedKey struct{}

func (a *admitted) finish(err error) {
	a.once.Do(func() {
		if err == nil {
			a.stop()
		}
		a.done(err)
	})
}

func (l *quicListener) Addr() net.Addr { return l.ln.Addr() }

// Close stops accepting and closes the UDP socket; sessions that are
// still open die with it, so the server closes them first.
func (l *quicListener) Close() error {
	var err error
	l.once.Do(func() {
		l.ln.Close()
		err = l.tr.Close()
		l.udp.Close()
	})
	return err
}

// DialQUIC opens a QUIC session to addr.
func DialQUIC(ctx context.Context, addr string, tlsConf *tls.Config, cfg QUICConfig) (Session, error) {
	laddr := &net.UDPAddr{IP: net.IPv4zero} // what quic.DialAddr binds
	if cfg.LocalAddr != "" {
		ip := net.ParseIP(cfg.LocalAddr)
		if ip == nil {
			return nil, fmt.Errorf("local address %q is not an IP address", cfg.LocalAddr)
		}
		laddr = &net.UDPAddr{IP: ip}
	}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP("udp", laddr)
	if err != nil {
		if cfg.LocalAddr == "" {
			return nil, fmt.Errorf("open quic client socket: %w", err)
		}
		return nil, fmt.Errorf("bind quic client to %s: %w", cfg.LocalAddr, err)
	}
	pc := cfg.packetConn(udp, true)
	tr := &quic.Transport{Conn: pc}
	qconf := cfg.quic()
	qconf.MaxIncomingUniStreams = 1 // the gateway's window refresh requests (quicwindow.go)
	c, err := tr.Dial(ctx, raddr, tlsConf, qconf)
	if err != nil {
		tr.Close()
		udp.Close()
		return nil, err
	}
	if l, ok := pc.(*lossyUDPConn); ok {
		l.lossy.Store(true)
	}
	s, err := newQUICSession(c)
	if err != nil {
		tr.Close()
		udp.Close()
		return nil, err
	}
	s.paths = &clientPaths{c: c, laddr: laddr, cfg: cfg, minGap: time.Second}
	go watchWindow(c, s.writers, &s.paths.count, s.paths.refresh, s.paths.warm)
	go s.paths.listenRequests()
	context.AfterFunc(c.Context(), func() { s.paths.close(); tr.Close(); udp.Close() })
	return s, nil
}

type quicSession struct {
	c       *quic.Conn
	binding []byte
	writers *writers
	paths   *clientPaths   // client only
	asker   *serverRefresh // server only

	// Server only, until Authenticated: the first stream the client opens
	// is the control stream; the next one is held (the first connection's
	// stream behind the Hello, client/early.go: see EarlyHold) and every
	// later one is reset as it arrives, so quic-go keeps none of its data
	// (see Gated).
	gated     bool
	firstOnce sync.Once
	authOnce  sync.Once
	resetCtx  context.Context
	stopReset context.CancelFunc
	resetDone chan struct{} // closed when resetUntilAuthenticated returned or never ran
	authed    chan struct{} // closed by Authenticated
	firstDone atomic.Bool   // the control stream was accepted

	heldMu    sync.Mutex
	held      *quic.Stream  // the stream behind the control stream, until Authenticated
	heldRead  chan struct{} // closed when readHeld returned
	heldBuf   []byte        // what readHeld took of held; readHeld's until heldRead is closed
	heldTimer *time.Timer   // resets held after EarlyHold
	heldOnce  bool          // a stream was held (or refused in its place): later ones are reset
	dropped   bool          // DropEarly was called
	heldReady *heldStream   // held with heldBuf in front, for the next AcceptStream
}

// EarlyHold is how long a QUIC gateway holds the one stream a client
// opened behind its control stream before authenticating (the first
// connection's stream right behind the Hello, client/early.go). A client
// sends it in the same flight as its last Hello, so an honest one is
// authenticated (or refused) long before; a held stream still waiting then
// is reset, as every other stream before authentication is.
//
// Meanwhile the gateway reads the held stream as it arrives into a buffer
// of its own, at most MaxEarlyBytes, and serves none of it: quic-go would
// keep each unread STREAM frame of 128 bytes or more in a packet-sized
// buffer (1452 bytes), so a client writing its data in small pieces could
// make an unread 1 MiB window cost 14 MiB (with the stream left unread, 8
// such sessions grew a gateway process by 113 MiB; read as it arrives, by
// 2.7 MiB: TestPreAuth_QUICHeldStreams). A held stream that brings more
// than MaxEarlyBytes before authentication is reset.
const EarlyHold = 3 * time.Second

// MaxEarlyBytes is what a client may send on its held stream before it is
// authenticated: the open header (at most 516 bytes) and the first
// request, of which a cachetun client sends at most 16 KiB before the
// Welcome (client/early.go).
const MaxEarlyBytes = 64 << 10

// quicStreamRefused is the reset code of a stream opened before the
// session authenticated.
const quicStreamRefused quic.StreamErrorCode = 0x2

func (s *quicSession) gateUntilAuthenticated() {
	s.gated = true
	s.resetCtx, s.stopReset = context.WithCancel(s.c.Context())
	s.resetDone = make(chan struct{})
	s.authed = make(chan struct{})
}

// resetUntilAuthenticated holds the first stream the client opens after
// the control stream and resets every later one, until Authenticated or
// the end of the connection.
func (s *quicSession) resetUntilAuthenticated() {
	defer close(s.resetDone)
	for {
		qs, err := s.c.AcceptStream(s.resetCtx)
		if err != nil {
			return
		}
		if !s.hold(qs) {
			refuseQUIC(qs)
		}
	}
}

func refuseQUIC(qs *quic.Stream) {
	qs.CancelRead(quicStreamRefused)
	qs.CancelWrite(quicStreamRefused)
}

// hold takes qs as the one early stream, unless one was held already or
// DropEarly was called.
func (s *quicSession) hold(qs *quic.Stream) bool {
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	if s.heldOnce || s.dropped {
		return false
	}
	s.heldOnce, s.held = true, qs
	s.heldRead = make(chan struct{})
	s.heldTimer = time.AfterFunc(EarlyHold, func() { s.dropHeld(qs) })
	go s.readHeld(qs)
	return true
}

// readHeld reads qs into heldBuf as it arrives, until Authenticated stops
// it (a read deadline), the stream ends, or it brings more than
// MaxEarlyBytes (then it is reset).
func (s *quicSession) readHeld(qs *quic.Stream) {
	defer close(s.heldRead)
	buf, n := make([]byte, 4<<10), 0
	for {
		if n == len(buf) {
			if n > MaxEarlyBytes {
				s.dropHeld(qs)
				return
			}
			buf = append(buf, make([]byte, min(len(buf), MaxEarlyBytes+1-n))...)
		}
		m, err := qs.Read(buf[n:])
		n += m
		s.heldBuf = buf[:n]
		if err != nil {
			return // a later Read meets the same error, or none after the deadline
		}
	}
}

// dropHeld resets qs if it is still the held stream.
func (s *quicSession) dropHeld(qs *quic.Stream) {
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	if s.held != qs || qs == nil {
		return
	}
	s.heldTimer.Stop()
	refuseQUIC(qs)
	s.held = nil
}

// DropEarly resets the held stream and, until Authenticated, every later
// one as before: the gateway refused a Hello, and a stream behind it is
// never served.
func (s *quicSession) DropEarly() {
	if !s.gated {
		return
	}
	s.heldMu.Lock()
	s.dropped = true
	qs := s.held
	s.heldMu.Unlock()
	s.dropHeld(qs)
}

// Authenticated stops resetting streams (Gated): the held stream, if any,
// is the next one AcceptStream returns, what readHeld took of it first;
// any other stream the client opened before is reset, one opened after is
// accepted.
func (s *quicSession) Authenticated() {
	if !s.gated {
		return
	}
	s.authOnce.Do(func() {
		s.stopReset()
		s.firstOnce.Do(func() { close(s.resetDone) }) // no stream yet: nothing to stop
		<-s.resetDone
		s.heldMu.Lock()
		qs, read := s.held, s.heldRead
		if qs != nil {
			s.heldTimer.Stop()
			s.held = nil
		}
		s.heldMu.Unlock()
		if qs != nil {
			_ = qs.SetReadDeadline(time.Now())
			<-read
			_ = qs.SetReadDeadline(time.Time{})
			s.heldReady = &heldStream{quicStream: &quicStream{s: qs, w: s.writers}, pre: s.heldBuf}
		}
		close(s.authed)
	})
}

func newQUICSession(c *quic.Conn) (*quicSession, error) {
	cs := c.ConnectionState()
	b, err := cs.TLS.ExportKeyingMaterial(BindingLabel, nil, 32)
	if err != nil {
		c.CloseWithError(quicCodeShutdown, "no channel binding")
		return nil, fmt.Errorf("export channel binding: %w", err)
	}
	return &quicSession{c: c, binding: b, writers: newWriters()}, nil
}

func (s *quicSession) OpenStream(ctx context.Context, req OpenRequest) (Stream, error) {
	qs, err := s.c.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return newClientStream(&quicStream{s: qs, w: s.writers}, req)
}

func (s *quicSession) AcceptStream(ctx context.Context) (Incoming, error) {
	if s.gated && s.firstDone.Load() {
		// Before authentication the control stream is the only one.
		select {
		case <-s.authed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		s.heldMu.Lock()
		held := s.heldReady
		s.heldReady = nil
		s.heldMu.Unlock()
		if held != nil {
			return &framedIncoming{s: held}, nil
		}
	}
	qs, err := s.c.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	if s.gated {
		s.firstOnce.Do(func() {
			s.firstDone.Store(true)
			go s.resetUntilAuthenticated()
		})
	}
	return &framedIncoming{s: &quicStream{s: qs, w: s.writers}}, nil
}

func (s *quicSession) Binding() []byte       { return s.binding }
func (s *quicSession) Transport() string     { return "quic" }
func (s *quicSession) LocalAddr() net.Addr   { return s.c.LocalAddr() }
func (s *quicSession) RemoteAddr() net.Addr  { return s.c.RemoteAddr() }
func (s *quicSession) Done() <-chan struct{} { return s.c.Context().Done() }
func (s *quicSession) Close() error {
	return s.c.CloseWithError(quicCodeNormal, "")
}

// NegotiatedProtocol is the ALPN protocol the handshake agreed on.
func (s *quicSession) NegotiatedProtocol() string {
	return s.c.ConnectionState().TLS.NegotiatedProtocol
}

// Stats returns the QUIC connection statistics (RTT, loss).
func (s *quicSession) Stats() quic.ConnectionStats { return s.c.ConnectionStats() }

// heldStream is the stream a gateway held before authentication
// (EarlyHold), once served: what readHeld took of it comes first. Only
// that one stream pays for the prefix; every other QUIC stream reads
// quic-go directly.
type heldStream struct {
	*quicStream
	pre []byte // used by the reader only
}

func (h *heldStream) Read(p []byte) (int, error) {
	if len(h.pre) == 0 {
		return h.quicStream.Read(p)
	}
	n := copy(p, h.pre)
	if h.pre = h.pre[n:]; len(h.pre) == 0 {
		h.pre = nil
	}
	return n, nil
}

// WaitReadable returns at once while the prefix lasts.
func (h *heldStream) WaitReadable() error {
	if len(h.pre) > 0 {
		return nil
	}
	return h.quicStream.WaitReadable()
}

// HeldStreamDropped reports whether err is a QUIC gateway's reset of a
// stream it did not serve because it came before authentication: one
// opened behind a Hello and held longer than EarlyHold, or any other.
func HeldStreamDropped(err error) bool {
	var se *quic.StreamError
	return errors.As(err, &se) && se.Remote && se.ErrorCode == quicStreamRefused
}

// peerStopped reports whether err is the peer's STOP_SENDING of a QUIC
// stream, as a server sends with a refusal.
func peerStopped(err error) bool {
	var se *quic.StreamError
	return errors.As(err, &se) && se.Remote
}

// quicStream adapts *quic.Stream to Stream. quic-go frees a stream only
// once both directions are finished, so Close finishes both: FIN on the
// send side (unless already reset) and CancelRead on the receive side.
type quicStream struct {
	s       *quic.Stream
	w       *writers // the connection's (quicwindow.go)
	scratch [1]byte  // WaitReadable's Peek; used by the reader only

	mu sync.Mutex // guards the following
	wroteFIN,
	aborted bool
}

func (q *quicStream) Read(p []byte) (int, error) { return q.s.Read(p) }
func (q *quicStream) Write(p []byte) (int, error) {
	q.w.begin()
	defer q.w.end()
	return q.s.Write(p)
}
func (q *quicStream) SetDeadline(t time.Time) error      { return q.s.SetDeadline(t) }
func (q *quicStream) SetReadDeadline(t time.Time) error  { return q.s.SetReadDeadline(t) }
func (q *quicStream) SetWriteDeadline(t time.Time) error { return q.s.SetWriteDeadline(t) }

func (q *quicStream) CloseWrite() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.wroteFIN || q.aborted {
		return nil
	}
	q.wroteFIN = true
	return q.s.Close()
}

func (q *quicStream) Close() error {
	err := q.CloseWrite()
	q.s.CancelRead(quicStreamDone)
	return err
}

func (q *quicStream) Abort() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.aborted {
		return
	}
	q.aborted = true
	q.s.CancelWrite(quicStreamAbort)
	q.s.CancelRead(quicStreamAbort)
}
