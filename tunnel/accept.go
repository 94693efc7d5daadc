package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// maxPendingHandshakes bounds the handshakes in flight on one TCP listener
// that has no Admission.
const maxPendingHandshakes = 256

// Admission decides which new connections may start a handshake; the
// gateway's per-source limits implement it. The transport knows nothing of
// keys: it only reports where a connection comes from and how its
// handshake ended.
type Admission interface {
	// Admit is called before any byte of a new connection from remote is
	// read. verified reports whether the source address is proven (always
	// on TCP; on QUIC after a Retry). An error refuses the connection at
	// once. Otherwise done must be called exactly once, when the handshake
	// has ended: with nil on success, else with why it failed.
	Admit(remote net.Addr, verified bool) (done func(error), err error)
	// RequireRetry reports whether a QUIC client from remote must prove
	// its address (a Retry round trip) before its handshake starts.
	RequireRetry(remote net.Addr) bool
}

// handshakeFunc turns an accepted TCP connection into a session. ctx ends
// when the listener closes; the function closes nothing on error (the
// caller closes c).
type handshakeFunc func(ctx context.Context, c net.Conn) (Session, error)

// tcpListener is the Listener of the TCP transports (TLS, SSH): it accepts
// connections and runs each handshake in a goroutine of its own, at most
// maxPendingHandshakes at once, so a slow client cannot stall the others.
// Accept hands out finished sessions.
type tcpListener struct {
	tcp       net.Listener
	handshake handshakeFunc
	admission Admission // nil: at most maxPendingHandshakes at once
	ready     chan Session
	ctx       context.Context // ends when the listener closes
	cancel    context.CancelFunc
	once      sync.Once
	wg        sync.WaitGroup
}

func newTCPListener(tcp net.Listener, hs handshakeFunc, adm Admission) *tcpListener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &tcpListener{tcp: tcp, handshake: hs, admission: adm, ready: make(chan Session), ctx: ctx, cancel: cancel}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

func (l *tcpListener) acceptLoop() {
	defer l.wg.Done()
	sem := make(chan struct{}, maxPendingHandshakes)
	for {
		c, err := l.tcp.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select { // EMFILE and friends: back off a little
			case <-time.After(10 * time.Millisecond):
			case <-l.ctx.Done():
				return
			}
			continue
		}
		var done func(error)
		if l.admission != nil {
			d, err := l.admission.Admit(c.RemoteAddr(), true)
			if err != nil {
				c.Close() // refused at once, never queued
				continue
			}
			done = d
		} else {
			select {
			case sem <- struct{}{}:
			default:
				c.Close() // too many handshakes at once
				continue
			}
			done = func(error) { <-sem }
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			setTCPOptions(c)
			s, err := l.handshake(l.ctx, c)
			done(err)
			if err != nil {
				c.Close()
				return
			}
			select {
			case l.ready <- s:
			case <-l.ctx.Done():
				s.Close()
			}
		}()
	}
}

func (l *tcpListener) Accept(ctx context.Context) (Session, error) {
	select {
	case s := <-l.ready:
		return s, nil
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *tcpListener) Addr() net.Addr { return l.tcp.Addr() }

// Close stops accepting, aborts the handshakes in flight and waits for
// them. Sessions already handed out are the caller's.
func (l *tcpListener) Close() error {
	var err error
	l.once.Do(func() {
		l.cancel()
		err = l.tcp.Close()
		l.wg.Wait()
	})
	return err
}

func setTCPOptions(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3})
	}
}

// tcpDialer returns a dialer bound to the local IP address local (empty:
// any).
func tcpDialer(local string) (*net.Dialer, error) {
	var d net.Dialer
	if local != "" {
		ip := net.ParseIP(local)
		if ip == nil {
			return nil, fmt.Errorf("local address %q is not an IP address", local)
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	return &d, nil
}
