package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
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
}

// DefaultQUICConfig returns the measured defaults.
func DefaultQUICConfig() QUICConfig {
	return QUICConfig{
		HandshakeTimeout: 5 * time.Second,
		IdleTimeout:      45 * time.Second,
		KeepAlive:        15 * time.Second,
		MaxStreams:       1024,
	}
}

func (c QUICConfig) quic() *quic.Config {
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
	}
}

// ListenQUIC listens on the UDP address addr. tlsConf must carry the
// server certificate and ALPN.
func ListenQUIC(addr string, tlsConf *tls.Config, cfg QUICConfig) (Listener, error) {
	udpAddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolve quic listen address %q: %w", addr, err)
	}
	udp, err := net.ListenUDP("udp", udpAddr)
	if err != nil {
		return nil, fmt.Errorf("listen quic on %q: %w", addr, err)
	}
	tr := &quic.Transport{Conn: udp}
	if cfg.StatelessResetKey != nil {
		k := quic.StatelessResetKey(*cfg.StatelessResetKey)
		tr.StatelessResetKey = &k
	}
	ln, err := tr.Listen(tlsConf, cfg.quic())
	if err != nil {
		udp.Close()
		return nil, fmt.Errorf("listen quic on %q: %w", addr, err)
	}
	return &quicListener{tr: tr, ln: ln, udp: udp}, nil
}

type quicListener struct {
	tr   *quic.Transport
	ln   *quic.Listener
	udp  *net.UDPConn
	once sync.Once
}

func (l *quicListener) Accept(ctx context.Context) (Session, error) {
	c, err := l.ln.Accept(ctx)
	if err != nil {
		if errors.Is(err, quic.ErrServerClosed) || errors.Is(err, quic.ErrTransportClosed) {
			return nil, net.ErrClosed
		}
		return nil, err
	}
	return newQUICSession(c)
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
	c, err := quic.DialAddr(ctx, addr, tlsConf, cfg.quic())
	if err != nil {
		return nil, err
	}
	return newQUICSession(c)
}

type quicSession struct {
	c       *quic.Conn
	binding []byte
}

func newQUICSession(c *quic.Conn) (*quicSession, error) {
	cs := c.ConnectionState()
	b, err := cs.TLS.ExportKeyingMaterial(BindingLabel, nil, 32)
	if err != nil {
		c.CloseWithError(quicCodeShutdown, "no channel binding")
		return nil, fmt.Errorf("export channel binding: %w", err)
	}
	return &quicSession{c: c, binding: b}, nil
}

func (s *quicSession) OpenStream(ctx context.Context, req OpenRequest) (Stream, error) {
	qs, err := s.c.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return newClientStream(&quicStream{s: qs}, req)
}

func (s *quicSession) AcceptStream(ctx context.Context) (Incoming, error) {
	qs, err := s.c.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return &framedIncoming{s: &quicStream{s: qs}}, nil
}

func (s *quicSession) Binding() []byte       { return s.binding }
func (s *quicSession) Transport() string     { return "quic" }
func (s *quicSession) LocalAddr() net.Addr   { return s.c.LocalAddr() }
func (s *quicSession) RemoteAddr() net.Addr  { return s.c.RemoteAddr() }
func (s *quicSession) Done() <-chan struct{} { return s.c.Context().Done() }
func (s *quicSession) Close() error {
	return s.c.CloseWithError(quicCodeNormal, "")
}

// Stats returns the QUIC connection statistics (RTT, loss).
func (s *quicSession) Stats() quic.ConnectionStats { return s.c.ConnectionStats() }

// quicStream adapts *quic.Stream to Stream. quic-go frees a stream only
// once both directions are finished, so Close finishes both: FIN on the
// send side (unless already reset) and CancelRead on the receive side.
type quicStream struct {
	s *quic.Stream

	mu sync.Mutex // guards the following
	wroteFIN,
	aborted bool
}

func (q *quicStream) Read(p []byte) (int, error)         { return q.s.Read(p) }
func (q *quicStream) Write(p []byte) (int, error)        { return q.s.Write(p) }
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
