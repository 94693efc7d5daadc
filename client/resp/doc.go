// Package resp rewrites Redis Cluster node addresses in one proxied RESP connection.
//
// A Redis Cluster tells its clients where the other nodes live: in -MOVED, -ASK
// (and Valkey's -REDIRECT) errors, and in the replies to CLUSTER SLOTS, CLUSTER
// SHARDS, CLUSTER NODES and CLUSTER REPLICAS/SLAVES. Those addresses are private
// (10.0.1.231:6379) and unreachable from the laptop; cachetun exposes every node on
// a local port instead (127.0.0.1:6380). A [Conn] sits on one client connection and
// replaces each node address it can map (see [AddrMap]) by the local one, so that
// redis-cli -c, go-redis's ClusterClient and redis-benchmark --cluster work through
// the tunnel unchanged.
//
// # How it works
//
// [Conn.CopyRequests] forwards client-to-server bytes untouched. It parses just
// enough of each command (RESP arrays of bulk strings, and inline commands, parsed
// exactly as Redis does) to number the replies and to note which of them are
// CLUSTER topology replies. [Conn.CopyReplies] forwards server-to-client bytes. It
// frames every reply (RESP2 and RESP3: attributes and push frames are recognised
// and do not count as replies), streams values it does not need through without
// copying them, and buffers only a topology reply that must be rewritten (up to
// 8 MiB) before re-encoding it with recomputed lengths. Top-level error replies
// "-MOVED <slot> <host:port>", "-ASK <slot> <host:port>" and
// "-REDIRECT <host:port>" are rewritten wherever they appear: a top-level error is
// self-describing, so this needs no pairing.
//
// Pairing survives pipelining (the request side hands the reply side only the
// numbers of the replies that need work, so the hot path costs a comparison per
// reply) and MULTI/EXEC: a CLUSTER command queued in a transaction is rewritten
// inside the EXEC reply, provided the EXEC array has exactly the number of queued
// commands.
//
// Performance: values are never copied on the way through; each read is parsed
// in place and written out whole with one Write before the next read, so the
// copy loop is io.Copy's plus framing: a few nanoseconds per reply (about 3 ns in
// a run of same-sized values, such as pipelined GETs, up to about 15 ns) and
// nothing per byte of a value. A value of any size streams through: only a reply
// being rewritten is held, up to 8 MiB. The pass-through path does not allocate.
//
// Node addresses are passed to [AddrMap] as the cluster prints them, "host:port"
// with an unbracketed IPv6 host, and an empty host when the node does not know
// its own address (a fresh node's "myself" entry, "unknown-endpoint" redirects):
// the node this connection is to. In MOVED, ASK and REDIRECT errors the mapped
// address is written as Map returns it; in CLUSTER replies it is split into host
// and port, and the IP, endpoint and hostname fields of a node all become the
// local host, so that clients preferring hostnames also reach the tunnel.
//
// # Safety
//
// Bytes that merely look like an address inside a value are never touched: only a
// reply known to answer a CLUSTER command, or a top-level error, is ever rewritten,
// and the rewriters check the shape of the reply first. When pairing can no longer
// be certain the Conn stops pairing for the rest of the connection (it still
// rewrites top-level redirect errors):
//
//   - after SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE or their UNSUBSCRIBE forms (in RESP2
//     the replies become pushes, in RESP3 the confirmations are push frames);
//   - after MONITOR;
//   - after any CLIENT REPLY command (OFF and SKIP suppress replies, and whether they
//     took effect cannot be told from the stream);
//   - after a request the parser cannot frame (the server answers a protocol error
//     and closes anyway), or more than 65536 outstanding topology replies.
//
// After SYNC or PSYNC, and after a reply stream the parser cannot frame (RESP3
// streamed strings and aggregates, which Redis never sends, are treated so), the
// rest of the connection is copied byte for byte. None of this is an error: the
// copy methods return only read and write errors.
//
// # Limits
//
// RESET does not restore pairing once it was given up. ROLE, INFO replication and
// SENTINEL replies, and redirects inside RESP3 blob errors or inside an EXEC array,
// are passed through unchanged. A topology reply larger than 8 MiB, or a
// transaction with more than 1024 queued CLUSTER commands, is passed through
// unchanged.
package resp
