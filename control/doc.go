// Package control is the session's control stream between a cachetun
// client and gateway: the frames and their JSON messages (Hello, Welcome,
// topology pushes, Ping, GoAway, Refresh, Revoked), the typed codes of a
// refusal, the frame reader and writer, and the set-up of a session on
// its control stream, the same on every transport: Accept on the gateway
// (the gateway's decisions come in through a Gate), Authenticate on the
// client. Only the proof of the key differs: a signature of the session
// binding on QUIC and TLS (Signature), the SSH handshake's own check on SSH
// (TransportVerified). See accept.go and authenticate.go.
//
// It sits above tunnel, which carries the control stream as one byte
// stream and knows nothing of targets, roles or slots: cmd → client,
// server → control → tunnel → auth, certs. The protocol flow is in
// proto.go and ../tunnel/PROTOCOL.md.
package control
