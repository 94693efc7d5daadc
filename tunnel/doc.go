// Package tunnel carries byte streams between a cachetun client and
// gateway: the transport-neutral Session, Stream and Listener interfaces,
// the three transports (QUIC, TLS 1.3 with yamux, SSH), the stream-open
// header and status (proto.go, PROTOCOL.md) and the relay that joins a
// stream to a TCP connection with half-close and reset propagation.
//
// The package knows nothing of caches, targets' topologies or keys: the
// control stream is one stream like any other here, and its frames and
// messages (Hello, Welcome, topology pushes, refusal codes) are package
// control, which sits above this one. Callers pass TLS and SSH
// configurations in, and authenticate on the control stream.
package tunnel
