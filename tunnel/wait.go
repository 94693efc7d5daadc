package tunnel

// Waiting for data without a buffer (readWaiter, see relay.go) on the
// transports that can: yamux wakes a zero-length Read when data arrives
// without consuming it, and quic-go can Peek one byte.

// waitReadable blocks until data, the end of the stream or an error.
func (y *yamuxStream) waitReadable([]byte) error {
	_, err := y.s.Read(nil)
	return err
}

// waitReadable blocks until data, the end of the stream or an error.
func (q *quicStream) waitReadable(scratch []byte) error {
	_, err := q.s.Peek(scratch[:1])
	return err
}
