// Package tunnel carries byte streams between a cachetun client and
// gateway: the transport-neutral Session, Stream and Listener interfaces,
// the three transports (QUIC, TLS 1.3 with yamux, SSH), the stream-open wire
// protocol (proto.go, PROTOCOL.md) and the relay that joins a stream to a TCP
// connection with half-close and reset propagation.
//
// The package knows nothing of caches or of keys: callers pass TLS and SSH
// configurations in, and authenticate on the control stream.
package tunnel
