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
//
// # The path of one proxied connection
//
// Six files, read in this order, follow one application connection from
// the laptop's local port to the cache and back; none is entered twice:
// each step reads its function top to bottom, and what it calls in a file
// further down the list is read there. Three small leaves are named but
// need no reading: each transport's OpenStream, the header codec
// (proto.go) and mayOpen (server/permit.go). The session the connection
// travels on is already up and authenticated (the control stream:
// control.Authenticate from client/dial.go, control.Accept from
// server/session.go's setUp).
//
//  1. Local accept, stream open (client/proxy.go). acceptLoop accepts on
//     the node's local port; serveLocal opens a stream with
//     Session.OpenStream(KindProxy, target, node) and calls
//     Relay(ctx, conn, stream, rewriter), the rewriter picked by
//     targetView.rewriter for the target's type: none, client/resp's for
//     Redis Cluster, client/memcache's for a memcached configuration
//     endpoint. OpenStream (quic.go, tls.go: a few lines each) opens the
//     transport's stream and wraps it with newClientStream; SSH opens a
//     channel whose open message is the header (ssh.go).
//  2. Open header (tunnel/framed.go). clientStream holds the header
//     (AppendHeader, proto.go) until the first Write carries it with the
//     first bytes, or FlushOpen sends it alone; its first Read or
//     WaitReadable reads the gateway's status. On the gateway,
//     framedIncoming.Request reads the header, Accept answers OK with the
//     first reply (statusStream), Reject refuses.
//  3. Authorise (server/session.go, serveIncoming then serveStream). The
//     gateway reads the request (Incoming.Request), resolves target and
//     node (resolve),
//     checks the key's targets= and permitopen= (Allows, mayOpen), dials
//     the node (target.dial), answers (Incoming.Accept) and calls
//     Relay(ctx, upstream, stream, nil, IdleTimeout(...)).
//  4. Upstream dial (server/target.go, Server.resolve and target.dial):
//     which configured target and node the request names, and the
//     connection to it with TLS and AUTH as the target is configured.
//  5. Relay (tunnel/relay.go, Relay). The same code on both ends: one copy
//     loop (copyLoop) per direction over a source that takes a pooled
//     64 KiB buffer only while data moves: the connection's raw
//     descriptor (connSource), a stream (streamSource, waiting with
//     Stream.WaitReadable), or a reader that cannot wait without one
//     (holdingSource). A Rewriter, when given, copies instead. The first
//     time the local connection has nothing to send, connSource calls
//     the stream's FlushOpen.
//     When the session negotiated resumption (control's Hello resume),
//     both ends relay a Resumable (resume.go) instead: the same Stream
//     over the transport's stream, with counters, a replay buffer and
//     attach/detach, so the relay outlives the session (client/resume.go,
//     server/resume.go; PROTOCOL.md, "Resumable streams").
//  6. Raw socket I/O (tunnel/rawio_linux.go): readFD, the read(2) of
//     connSource, and fastConn, the connection writes of the relay, both
//     without the scheduler's syscall bookkeeping (readfd_unix.go and
//     rawio_other.go elsewhere).
package tunnel
