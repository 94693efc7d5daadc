// Package control is the session's control stream between a cachetun
// client and gateway: the frames and their JSON messages (Hello, Welcome,
// topology pushes, Ping, GoAway, Refresh, Revoked), the typed codes of a
// refusal, and the frame reader and writer.
//
// It sits above tunnel, which carries the control stream as one byte
// stream and knows nothing of targets, roles or slots: cmd → client,
// server → control → tunnel → auth, certs. The protocol flow is in
// proto.go and ../tunnel/PROTOCOL.md.
package control
