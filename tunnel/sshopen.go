package tunnel

import (
	"context"
	"net"
	"sync"
	"time"
)

// An SSH channel cannot carry data before the peer confirmed it, so a
// stream whose header waits for its open confirmation costs a round trip
// more than on QUIC and TLS, where payload follows the header at once.
// When the gateway says it takes payload in the channel-open
// (EnableOpenPayload, announced in its Welcome), a proxy channel is opened
// lazily instead: by the stream's first Write, with up to MaxOpenPayload
// bytes of it behind the header in the channel-open message, or with the
// header alone by FlushOpen, the first Read or CloseWrite. The gateway
// keeps those bytes with the open until it has authorised the stream and
// dialled its node; a refused open discards them.

// MaxOpenPayload bounds the payload behind the open header of an SSH
// channel-open (the gateway refuses an open that carries more).
const MaxOpenPayload = 16 << 10

// OpenPayloader is a session that can send a stream's first payload with
// its open; the client enables it when the gateway announced support.
type OpenPayloader interface {
	EnableOpenPayload()
}

// EnableOpenPayload makes later proxy streams (KindProxy; a resume opens
// at once, as before) open lazily, their first payload in the
// channel-open (client only).
func (s *sshSession) EnableOpenPayload() {
	if !s.server {
		s.openPayload.Store(true)
	}
}

// sshOpening is a client stream whose channel is not open yet.
type sshOpening struct {
	s   *sshSession
	typ string
	hdr []byte

	mu      sync.Mutex // held while opening; guards the following
	started bool
	closed  bool
	st      Stream // the open channel or the refusal, once opened
	err     error  // why the open failed (not a refusal)
	rd, wd  time.Time
	hold    *time.Timer   // FlushOpen's delayed open
	opened  chan struct{} // closed once st or err is set (or the stream closed unopened)
}

func newSSHOpening(s *sshSession, typ string, hdr []byte) *sshOpening {
	return &sshOpening{s: s, typ: typ, hdr: hdr, opened: make(chan struct{})}
}

// openLocked opens the channel with payload p (at most MaxOpenPayload
// bytes) behind the header; o.mu is held. It waits for the answer.
func (o *sshOpening) openLocked(p []byte) {
	o.started = true
	if o.hold != nil {
		o.hold.Stop()
	}
	defer close(o.opened)
	if o.closed {
		o.err = net.ErrClosed
		return
	}
	extra := make([]byte, 0, len(o.hdr)+len(p))
	extra = append(append(extra, o.hdr...), p...)
	st, err := o.s.openChannel(context.Background(), o.typ, extra)
	if err != nil {
		o.err = err
		return
	}
	if !o.rd.IsZero() {
		_ = st.SetReadDeadline(o.rd)
	}
	if !o.wd.IsZero() {
		_ = st.SetWriteDeadline(o.wd)
	}
	o.st = st
}

// stream opens the channel with the header alone if it is not open yet,
// and returns it.
func (o *sshOpening) stream() (Stream, error) {
	o.mu.Lock()
	if !o.started {
		o.openLocked(nil)
	}
	o.mu.Unlock()
	<-o.opened
	return o.st, o.err
}

func (o *sshOpening) Write(p []byte) (int, error) {
	o.mu.Lock()
	if !o.started {
		n := min(len(p), MaxOpenPayload)
		o.openLocked(p[:n])
		o.mu.Unlock()
		if o.err != nil {
			return 0, o.err
		}
		if n == len(p) {
			return n, nil
		}
		m, err := o.st.Write(p[n:])
		return n + m, err
	}
	o.mu.Unlock()
	st, err := o.stream()
	if err != nil {
		return 0, err
	}
	return st.Write(p)
}

// Read opens the channel with the header alone, after sshOpenHold, if no
// Write did first, and reads it.
func (o *sshOpening) Read(p []byte) (int, error) {
	_ = o.FlushOpen()
	<-o.opened
	if o.err != nil {
		return 0, o.err
	}
	return o.st.Read(p)
}

// sshOpenHold is how long FlushOpen waits for a first Write before it
// opens the channel with the header alone. Relay calls FlushOpen as soon
// as the local connection has nothing to send, often a moment before the
// application's first request: on SSH, where a channel cannot carry data
// before its confirmation, sending the header alone then would cost a
// round trip; waiting a few milliseconds for the request costs at most
// that on a connection whose server speaks first.
const sshOpenHold = 5 * time.Millisecond

// FlushOpen opens the channel with the header alone in sshOpenHold, unless
// a Write opens it with payload first. It does not wait.
func (o *sshOpening) FlushOpen() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.started || o.hold != nil {
		return nil
	}
	o.hold = time.AfterFunc(sshOpenHold, func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		if !o.started {
			o.openLocked(nil)
		}
	})
	return nil
}

// WaitReadable waits until the channel was opened (by the first Write,
// FlushOpen, Read or CloseWrite: it does not open it itself, so that the
// first payload can still ride in the open), then answers as the channel
// does: an SSH channel cannot wait without reading (ErrNoWait), a refusal
// returns its error.
func (o *sshOpening) WaitReadable() error {
	<-o.opened
	if o.err != nil {
		return o.err
	}
	return o.st.WaitReadable()
}

func (o *sshOpening) CloseWrite() error {
	st, err := o.stream()
	if err != nil {
		return err
	}
	return st.CloseWrite()
}

// closeUnopened marks a stream that was never opened closed; it reports
// whether it was unopened.
func (o *sshOpening) closeUnopened() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.started {
		return false
	}
	o.closed = true
	o.started = true
	o.err = net.ErrClosed
	close(o.opened)
	return true
}

// Close closes the channel; a stream never opened opens nothing.
func (o *sshOpening) Close() error {
	if o.closeUnopened() {
		return nil
	}
	<-o.opened
	if o.st == nil {
		return nil
	}
	return o.st.Close()
}

func (o *sshOpening) Abort() { _ = o.Close() }

func (o *sshOpening) SetDeadline(t time.Time) error {
	if err := o.SetReadDeadline(t); err != nil {
		return err
	}
	return o.SetWriteDeadline(t)
}

func (o *sshOpening) SetReadDeadline(t time.Time) error {
	return o.setDeadline(t, &o.rd, Stream.SetReadDeadline)
}

func (o *sshOpening) SetWriteDeadline(t time.Time) error {
	return o.setDeadline(t, &o.wd, Stream.SetWriteDeadline)
}

// setDeadline keeps t in *saved until the channel open has started, and
// afterwards sets it on the opened stream (once the open returned).
func (o *sshOpening) setDeadline(t time.Time, saved *time.Time, set func(Stream, time.Time) error) error {
	o.mu.Lock()
	if !o.started {
		*saved = t
		o.mu.Unlock()
		return nil
	}
	o.mu.Unlock()
	<-o.opened
	if o.st == nil {
		return nil
	}
	return set(o.st, t)
}
