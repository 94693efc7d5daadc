package tunnel

import (
	"errors"
	"io"

	"github.com/quic-go/quic-go"
)

// ClosedByPeer reports whether err, from a session's or stream's Read or
// AcceptStream, means that the peer ended it in an orderly way: EOF (TLS
// and SSH), or a QUIC connection closed by the peer with the normal code.
// Callers use it to tell a client that left from a failure worth a log
// line.
func ClosedByPeer(err error) bool {
	if errors.Is(err, io.EOF) {
		return true
	}
	var ae *quic.ApplicationError
	return errors.As(err, &ae) && ae.Remote && ae.ErrorCode == quicCodeNormal
}
