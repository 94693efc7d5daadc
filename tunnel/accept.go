package tunnel

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// maxPendingHandshakes bounds the handshakes in flight on one TCP listener.
const maxPendingHandshakes = 256

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
	ready     chan Session
	ctx       context.Context // ends when the listener closes
	cancel    context.CancelFunc
	once      sync.Once
	wg        sync.WaitGroup
}

func newTCPListener(tcp net.Listener, hs handshakeFunc) *tcpListener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &tcpListener{tcp: tcp, handshake: hs, ready: make(chan Session), ctx: ctx, cancel: cancel}
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
		select {
		case sem <- struct{}{}:
		default:
			c.Close() // too many handshakes at once
			continue
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer func() { <-sem }()
			setTCPOptions(c)
			s, err := l.handshake(l.ctx, c)
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
