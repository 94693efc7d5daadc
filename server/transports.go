package server

import (
	"crypto/tls"

	"github.com/cachetun/cachetun/tunnel"
)

func (s *Server) listenTLS(addr string, conf *tls.Config) (tunnel.Listener, error) {
	tc := tunnel.DefaultTLSConfig()
	tc.HandshakeTimeout = s.config().Limits.HandshakeTimeout
	tc.MaxStreams = s.config().Limits.MaxStreamsPerSession
	tc.Admission = s.transportAdmission("tls")
	return tunnel.ListenTLS(addr, conf, tc)
}
