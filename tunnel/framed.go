package tunnel

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Transports with in-band open headers (QUIC, TLS+yamux) share the code in
// this file: the client writes the header and reads the status lazily; the
// server reads the header and answers with a status.
//
// Both ends hold their first bytes back for a moment so that they travel
// with the first payload: the client's header with the first request, the
// server's OK status with the first reply. That is one write, one QUIC
// packet or yamux frame, instead of two at every stream open. Nothing waits
// for it: the header goes out alone before the client's first Read, close
// or (in Relay) as soon as the local connection has nothing to send, and
// the status alone on the server's close, so no protocol can stall on it.

// coalesceMax bounds the payload copied behind a header or status; a larger
// first write goes out as two writes.
const coalesceMax = 16 << 10

// pendingWrite holds bytes that must precede every other byte written to a
// stream.
type pendingWrite struct {
	pending atomic.Bool
	mu      sync.Mutex // guards b; held while b is being written
	b       []byte
	gone    sync.Cond // broadcast when b has gone out or was dropped; L is &mu
}

func (pw *pendingWrite) set(b []byte) {
	pw.b = b
	pw.gone.L = &pw.mu
	pw.pending.Store(true)
}

// takeLocked returns the pending bytes and marks them gone. pw.mu is held.
func (pw *pendingWrite) takeLocked() []byte {
	b := pw.b
	if b != nil {
		pw.b = nil
		pw.pending.Store(false)
		pw.gone.Broadcast()
	}
	return b
}

// wait blocks until the pending bytes have been written (or dropped).
func (pw *pendingWrite) wait() {
	if !pw.pending.Load() {
		return
	}
	pw.mu.Lock()
	for pw.b != nil {
		pw.gone.Wait()
	}
	pw.mu.Unlock()
}

// writeWith writes the pending bytes, then p, as one write when p is small.
// done is false when nothing was pending (any more): the caller writes p.
func (pw *pendingWrite) writeWith(s Stream, p []byte) (n int, done bool, err error) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	b := pw.takeLocked()
	if b == nil {
		return 0, false, nil
	}
	if len(p) > coalesceMax {
		if _, err := s.Write(b); err != nil {
			return 0, true, err
		}
		n, err := s.Write(p)
		return n, true, err
	}
	buf := make([]byte, 0, len(b)+len(p))
	buf = append(append(buf, b...), p...)
	n, err = s.Write(buf)
	return max(n-len(b), 0), true, err
}

// flush writes the pending bytes alone, if any.
func (pw *pendingWrite) flush(s Stream) error {
	if !pw.pending.Load() {
		return nil
	}
	pw.mu.Lock()
	defer pw.mu.Unlock()
	b := pw.takeLocked()
	if b == nil {
		return nil
	}
	_, err := s.Write(b)
	return err
}

// drop forgets the pending bytes (the stream is being reset).
func (pw *pendingWrite) drop() {
	pw.mu.Lock()
	pw.takeLocked()
	pw.mu.Unlock()
}

// clientStream is the client end: it sends the open header with the first
// payload and reads the server's status before the first payload byte.
// Read is not safe for concurrent use (nor is any stream's Read).
type clientStream struct {
	Stream
	hdr        pendingWrite
	statusDone bool
	statusErr  error
	statusRead int // bytes of the status read so far
}

func newClientStream(s Stream, req OpenRequest) (*clientStream, error) {
	hdr, err := AppendHeader(make([]byte, 0, 7+len(req.Target)+len(req.Node)+32), req)
	if err != nil {
		s.Abort()
		return nil, err
	}
	c := &clientStream{Stream: s}
	c.hdr.set(hdr)
	return c, nil
}

func (c *clientStream) Write(p []byte) (int, error) {
	if c.hdr.pending.Load() {
		if n, done, err := c.hdr.writeWith(c.Stream, p); done {
			// A write the server stopped (QUIC STOP_SENDING of a refused
			// stream) leaves the refusal readable: no abort then.
			if err != nil && !peerStopped(err) {
				c.Stream.Abort()
			}
			return n, err
		}
	}
	return c.Stream.Write(p)
}

// FlushOpen sends the open header alone if it is still unsent.
func (c *clientStream) FlushOpen() error { return c.flushOpen() }

func (c *clientStream) flushOpen() error {
	if err := c.hdr.flush(c.Stream); err != nil {
		c.Stream.Abort()
		return err
	}
	return nil
}

func (c *clientStream) readStatus() error {
	if !c.statusDone {
		c.statusDone = true
		if c.statusErr = c.flushOpen(); c.statusErr == nil {
			c.statusErr = ReadStatus((*statusReader)(c))
			// A deadline that passed before any byte of the status came is
			// not fatal (tunnel.Stream): the next Read waits for it again.
			// One that cut the status in the middle is: the rest of it
			// cannot be told from payload.
			if c.statusRead == 0 && errors.Is(c.statusErr, os.ErrDeadlineExceeded) {
				c.statusDone = false
				return c.statusErr
			}
		}
	}
	return c.statusErr
}

// statusReader reads the server's status for a clientStream and counts
// its bytes.
type statusReader clientStream

func (r *statusReader) Read(p []byte) (int, error) {
	n, err := r.Stream.Read(p)
	r.statusRead += n
	return n, err
}

func (c *clientStream) Read(p []byte) (int, error) {
	// A failed status stays the answer of every Read: what follows a
	// status cut in the middle is not payload.
	if !c.statusDone || c.statusErr != nil {
		if err := c.readStatus(); err != nil {
			return 0, err
		}
	}
	return c.Stream.Read(p)
}

// WaitReadable waits until the open header is out (a Read would send it
// alone, and the first payload should carry it), reads the status (it
// holds no buffer meanwhile), then waits for payload.
func (c *clientStream) WaitReadable() error {
	c.hdr.wait()
	if !c.statusDone || c.statusErr != nil {
		if err := c.readStatus(); err != nil {
			return err
		}
	}
	return c.Stream.WaitReadable()
}

func (c *clientStream) CloseWrite() error {
	if err := c.flushOpen(); err != nil {
		return err
	}
	return c.Stream.CloseWrite()
}

func (c *clientStream) Close() error {
	_ = c.hdr.flush(c.Stream)
	return c.Stream.Close()
}

func (c *clientStream) Abort() {
	c.hdr.drop()
	c.Stream.Abort()
}

// statusStream is the server end of an accepted stream: the OK status goes
// out with the first payload, or alone on CloseWrite and Close.
type statusStream struct {
	Stream
	status pendingWrite
}

// okStatus is the encoded StatusOK reply.
var okStatus = AppendStatus(nil, StatusOK, "")

func (s *statusStream) Write(p []byte) (int, error) {
	if s.status.pending.Load() {
		if n, done, err := s.status.writeWith(s.Stream, p); done {
			if err != nil {
				s.Stream.Abort()
			}
			return n, err
		}
	}
	return s.Stream.Write(p)
}

func (s *statusStream) CloseWrite() error {
	if err := s.status.flush(s.Stream); err != nil {
		s.Stream.Abort()
		return err
	}
	return s.Stream.CloseWrite()
}

func (s *statusStream) Close() error {
	_ = s.status.flush(s.Stream)
	return s.Stream.Close()
}

func (s *statusStream) Abort() {
	s.status.drop()
	s.Stream.Abort()
}

// framedIncoming is a server-side stream whose header is still unread.
type framedIncoming struct {
	s    Stream
	once sync.Once
}

func (in *framedIncoming) Request(deadline time.Time) (OpenRequest, error) {
	_ = in.s.SetReadDeadline(deadline)
	req, err := ReadHeader(in.s)
	_ = in.s.SetReadDeadline(time.Time{})
	return req, err
}

// Accept answers OK with the stream's first payload (see statusStream).
func (in *framedIncoming) Accept() (Stream, error) {
	st := &statusStream{Stream: in.s}
	st.status.set(okStatus)
	return st, nil
}

// Reject answers with the refusal and closes the stream in both
// directions: on QUIC, Close is FIN plus STOP_SENDING, after which quic-go
// keeps none of the stream's data and the peer resets it. yamux cannot
// reset a stream, so there the stream drains (see yamuxStream.drainRefused)
// and Reject returns once it is gone.
func (in *framedIncoming) Reject(code Status, msg string) { in.rejectFreed(code, msg, nil) }

// rejectFreed is Reject that calls freed, if not nil, when the stream is
// freed: before the refusal is written on QUIC, where Close frees it,
// after the drain on yamux.
func (in *framedIncoming) rejectFreed(code Status, msg string, freed func()) {
	in.once.Do(func() {
		d, drains := in.s.(refusedDrainer)
		if !drains && freed != nil {
			freed()
		}
		_ = in.s.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := in.s.Write(AppendStatus(nil, code, msg)); err != nil {
			in.s.Abort()
		} else {
			_ = in.s.Close()
			if drains {
				d.drainRefused(RejectLinger)
			}
		}
		if drains && freed != nil {
			freed()
		}
	})
}

// Release waits until the transport has freed st, which the caller has
// closed or aborted, so that a caller that counts streams counts st until
// it is really gone. QUIC and SSH free a closed stream themselves (the
// peer's stack answers STOP_SENDING with RESET_STREAM; a channel close is
// confirmed), so Release returns at once there. yamux has no stream
// reset: a closed stream stays in the session, buffering what the peer
// still sends, until the peer closes its side or yamux's close timeout (a
// minute) frees it; Release reads and discards meanwhile, so the stream
// holds no more than one frame.
func Release(st Stream) {
	if r, ok := st.(interface{ release() }); ok {
		r.release()
	}
}

func (s *statusStream) release() { Release(s.Stream) }

// RejectLinger bounds how long a refused stream may stay open on a
// transport without stream reset (TLS+yamux) after the refusal: a peer
// that has not closed it by then loses its whole session, as the stream
// could otherwise hold its receive buffer until yamux's StreamCloseTimeout.
const RejectLinger = 5 * time.Second

// refusedDrainer is implemented by streams whose transport has no stream
// reset: drainRefused discards what the peer still sends on a refused,
// closed stream until the peer closes its side, at most for linger.
type refusedDrainer interface {
	drainRefused(linger time.Duration)
}
