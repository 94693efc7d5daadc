package tunnel

import (
	"sync"
	"time"
)

// Transports with in-band open headers (QUIC, TLS+yamux) share the code in
// this file: the client writes the header first and reads the status
// lazily; the server reads the header and answers with a status.

// clientStream reads the server's status before the first payload byte.
// Read is not safe for concurrent use (nor is any stream's Read).
type clientStream struct {
	Stream
	statusDone bool
	statusErr  error
}

func newClientStream(s Stream, req OpenRequest) (*clientStream, error) {
	hdr, err := AppendHeader(make([]byte, 0, 6+len(req.Target)+len(req.Node)), req)
	if err != nil {
		return nil, err
	}
	if _, err := s.Write(hdr); err != nil {
		s.Abort()
		return nil, err
	}
	return &clientStream{Stream: s}, nil
}

func (c *clientStream) Read(p []byte) (int, error) {
	if !c.statusDone {
		c.statusDone = true
		c.statusErr = ReadStatus(c.Stream)
	}
	if c.statusErr != nil {
		return 0, c.statusErr
	}
	return c.Stream.Read(p)
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

func (in *framedIncoming) Accept() (Stream, error) {
	if _, err := in.s.Write(AppendStatus(nil, StatusOK, "")); err != nil {
		in.s.Abort()
		return nil, err
	}
	return in.s, nil
}

func (in *framedIncoming) Reject(code Status, msg string) {
	in.once.Do(func() {
		_ = in.s.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := in.s.Write(AppendStatus(nil, code, msg)); err != nil {
			in.s.Abort()
			return
		}
		_ = in.s.Close()
	})
}
