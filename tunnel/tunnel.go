package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"time"
)

// Stream is one bidirectional byte stream of a session.
//
// Close releases the stream in both directions; CloseWrite only ends the
// write side (the peer reads io.EOF) and reading goes on. Abort resets the
// stream where the transport can (QUIC): the peer sees an error rather
// than a clean end; SSH and TLS+yamux have no stream reset, there the peer
// sees io.EOF as after Close. After Close or Abort, Read and Write return
// an error, and a Read blocked at that moment returns. Close, CloseWrite
// and Abort are idempotent.
//
// Deadlines work as on a net.Conn: a deadline that has passed makes Read
// (or Write) fail with an error that matches os.ErrDeadlineExceeded and is
// a net.Error whose Timeout is true, and it releases a call blocked at that
// moment; a deadline moved before it passes does nothing. One that passes
// with no call blocked is not fatal: once moved, the stream works again.
// Exceptions: on SSH, which has no deadlines of its own, a deadline that
// releases a blocked call closes the stream (see sshStream); on a QUIC or
// TLS client stream, whose first Read reads the server's status, a
// deadline that cuts the status in the middle ends the stream.
//
// Two methods are the contract with Relay, which calls them on every
// stream: WaitReadable lets an idle relay wait without a copy buffer, and
// FlushOpen sends a client stream's open header when the local connection
// has nothing to send with it.
type Stream interface {
	io.ReadWriteCloser
	CloseWrite() error
	Abort()
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
	// WaitReadable blocks until a Read would not block: data is there, the
	// stream ended (io.EOF) or it failed. It consumes no data and holds no
	// buffer. A stream whose transport cannot wait that way (SSH) returns
	// ErrNoWait at once; its reader must hold a buffer in Read. On a
	// client stream whose open header is still unsent, WaitReadable first
	// waits until the header has gone out (with the first Write, or by
	// FlushOpen, CloseWrite, Close or Abort), then reads the server's
	// status; deadlines do not cut that first wait. Like Read, it is not
	// safe for concurrent use with Read.
	WaitReadable() error
	// FlushOpen sends the open header now, alone, if it is still unsent
	// (a client stream on QUIC or TLS, whose header otherwise travels with
	// the first Write). On every other stream it does nothing and returns
	// nil; in particular a server stream's OK status still waits for the
	// first reply or the close.
	FlushOpen() error
}

// ErrNoWait is returned by Stream.WaitReadable on a stream that cannot
// wait for data without reading it.
var ErrNoWait = errors.New("stream cannot wait for data without a buffer")

// Incoming is a stream the peer opened that the server has not yet
// answered. The server reads the request, then either accepts or rejects.
type Incoming interface {
	// Request returns the open header; it waits for it at most until
	// deadline.
	Request(deadline time.Time) (OpenRequest, error)
	// Accept answers StatusOK and returns the stream.
	Accept() (Stream, error)
	// Reject answers with a refusal and releases the stream in both
	// directions; early payload is discarded, never buffered. It returns
	// once the transport has freed the stream, so a caller that counts
	// streams counts a refused one until it is gone: at once on QUIC and
	// SSH; on TLS+yamux, which has no stream reset, when the peer has closed
	// its side, at most RejectLinger later (then the whole session is
	// closed).
	Reject(code Status, msg string)
}

// RejectFreed is in.Reject that calls freed (once) at the moment the
// transport frees the stream, for a caller that counts streams. Where the
// refusal itself frees the stream (QUIC, SSH), freed runs before the
// refusal is sent, so a peer that opens its next stream on reading the
// refusal never meets this one still counted; on TLS+yamux it runs once
// the peer has closed its side (see Reject). An Incoming of another
// package gets freed after its Reject returns.
func RejectFreed(in Incoming, code Status, msg string, freed func()) {
	if r, ok := in.(interface {
		rejectFreed(Status, string, func())
	}); ok {
		r.rejectFreed(code, msg, freed)
		return
	}
	in.Reject(code, msg)
	freed()
}

// Session is one authenticated-or-not connection between a client and a
// server carrying many streams.
type Session interface {
	// OpenStream opens a stream carrying req. On transports with in-band
	// headers the header is sent at once and the status is read by the
	// first Read, which returns a *StatusError for a refusal.
	//
	// OpenStream waits for room at most until ctx ends, then returns
	// ctx's error. A stream beyond the peer's MaxStreams never reaches its
	// AcceptStream: OpenStream waits (QUIC: streams open at once; TLS: with
	// the client's MaxStreams opens unanswered; SSH: until accepted), or the
	// stream fails at its first Read (SSH: StatusLimit; TLS: a reset).
	OpenStream(ctx context.Context, req OpenRequest) (Stream, error)
	// AcceptStream waits for the next stream the peer opens.
	AcceptStream(ctx context.Context) (Incoming, error)
	// Binding returns a value that both ends of this very session compute
	// and no other session shares (TLS exporter, SSH session ID).
	Binding() []byte
	// Transport names the transport: "quic", "tls" or "ssh".
	Transport() string
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	// Done is closed when the session has ended.
	Done() <-chan struct{}
	// Close ends the session and every stream of it. Idempotent.
	Close() error
}

// PreAuthenticated is implemented by sessions whose transport already
// authenticated the client (SSH); AuthInfo returns what the transport's
// auth callback decided.
type PreAuthenticated interface {
	AuthInfo() any
}

// Gated is implemented by server sessions that, until Authenticated is
// called, serve nothing but the first stream the client opened (the control
// stream) and act on no data of any other: on TLS+yamux the frames of
// other streams stay unread in the socket; on QUIC the next stream is held
// (at most MaxEarlyBytes of it copied aside, for at most EarlyHold) and
// later ones are reset as they arrive. The server calls Authenticated once
// the client has proved its key, before it answers; the transport knows
// nothing of keys.
type Gated interface {
	Authenticated()
}

// EarlyDropper is a server session that holds back the streams a client
// opened before it authenticated (TLS, QUIC); DropEarly discards them from
// now on, for a session whose Hello was refused.
type EarlyDropper interface {
	DropEarly()
}

// Listener accepts sessions of one transport.
type Listener interface {
	Accept(ctx context.Context) (Session, error)
	Addr() net.Addr
	Close() error
}

// ErrSessionClosed is returned by operations on a closed session.
var ErrSessionClosed = errors.New("session closed")
