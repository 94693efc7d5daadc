package tunnel

import "net"

// Stream.WaitReadable and Stream.FlushOpen of the transports' own streams
// (the client stream's, which waits for its open header and reads the
// status first, is in framed.go). yamux wakes a zero-length Read when data
// arrives without consuming it, and quic-go can Peek one byte; an SSH
// channel can do neither.

// WaitReadable blocks until data, the end of the stream or an error.
func (y *yamuxStream) WaitReadable() error {
	if y.closed.Load() {
		return net.ErrClosed
	}
	_, err := y.s.Read(nil)
	if err != nil && y.closed.Load() {
		return net.ErrClosed
	}
	return yamuxDeadline(err)
}

// FlushOpen does nothing: the open header is clientStream's.
func (y *yamuxStream) FlushOpen() error { return nil }

// WaitReadable blocks until data, the end of the stream or an error.
func (q *quicStream) WaitReadable() error {
	_, err := q.s.Peek(q.scratch[:])
	return err
}

// FlushOpen does nothing: the open header is clientStream's.
func (q *quicStream) FlushOpen() error { return nil }

// WaitReadable returns ErrNoWait: an SSH channel cannot wait without
// reading.
func (s *sshStream) WaitReadable() error { return ErrNoWait }

// FlushOpen does nothing: SSH opens a channel with its own message.
func (s *sshStream) FlushOpen() error { return nil }

// WaitReadable returns at once: Read returns the refusal.
func (r *refusedStream) WaitReadable() error { return r.err }

// FlushOpen does nothing.
func (r *refusedStream) FlushOpen() error { return nil }
