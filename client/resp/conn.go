package resp

import (
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
)

// AddrMap maps an upstream node address "host:port", as the cluster reports it, to
// the local "ip:port" the client should use instead. The host may be an IP address
// (IPv6 without brackets, as Redis prints it), a hostname, or empty, which means
// "the node this connection is to". ok=false leaves the text unchanged.
//
// AddrMap is called from the goroutine running [Conn.CopyReplies]; it must be cheap
// and must not block.
type AddrMap func(upstream string) (local string, ok bool)

// Kinds passed to [Options.OnRedirect].
const (
	KindMoved    = "MOVED"    // a -MOVED error
	KindAsk      = "ASK"      // an -ASK error
	KindRedirect = "REDIRECT" // a -REDIRECT error (Valkey); slot is -1
	KindUnknown  = "UNKNOWN"  // a node in a CLUSTER reply that Map does not know
)

// Options configure a [Conn].
type Options struct {
	// Map finds the local address of a cluster node. Nil disables all rewriting:
	// both copy methods then copy bytes and nothing else.
	Map AddrMap

	// OnRedirect, if not nil, is called with the upstream address of every MOVED,
	// ASK and REDIRECT error seen (kind KindMoved, KindAsk, KindRedirect), before
	// Map is asked about that address, and with every node of a CLUSTER reply
	// that Map does not know (kind KindUnknown, after Map failed; slot is the
	// first slot of the node's range, or -1), so that the caller can ask for a
	// topology refresh. It is called from the goroutine running CopyReplies, and
	// replies wait for it: it must return quickly.
	OnRedirect func(kind string, slot int, upstream string)

	// Logger receives debug records when the Conn gives up pairing or parsing.
	// Nil discards them.
	Logger *slog.Logger
}

// Limits.
const (
	bufSize     = 64 << 10 // read buffer of each direction
	maxCapture  = 8 << 20  // largest topology reply that is rewritten
	maxLine     = 1024     // longest error line examined for a redirect
	maxDepth    = 512      // deepest reply nesting framed; deeper is copied raw
	maxPending  = 1 << 16  // most outstanding replies that need work
	maxExecCmds = 1024     // most CLUSTER commands in one transaction
	maxInline   = 64 << 10 // longest inline command (Redis's PROTO_INLINE_MAX_SIZE)
)

// kind says what the reply to one command needs.
type kind uint8

const (
	kNone     kind = iota
	kSlots         // CLUSTER SLOTS
	kShards        // CLUSTER SHARDS
	kNodes         // CLUSTER NODES
	kReplicas      // CLUSTER REPLICAS / CLUSTER SLAVES
	kExec          // EXEC of a transaction that queued some of the above
	kUnpair        // from this reply on, replies can no longer be paired
	kRaw           // from this reply on, the stream is not RESP (SYNC, PSYNC)
)

// entry is the note the request side leaves for the reply side about reply number idx.
type entry struct {
	idx  int64
	kind kind
	exec *execPlan // kExec only
}

// execPlan lists the queued commands of a transaction whose replies need work.
type execPlan struct {
	n     int64      // commands queued; the EXEC array must have exactly n elements
	items []execItem // ascending pos
}

type execItem struct {
	pos  int64
	kind kind
}

// Conn rewrites the replies of one proxied client connection. It couples the two
// directions: requests are observed (never modified) to learn which replies need
// rewriting, replies are rewritten.
//
// Run CopyRequests and CopyReplies once each, in two goroutines. A request must
// pass through CopyRequests before the server can answer it, which always holds
// when dst of CopyRequests is the server. Neither method closes anything.
//
// Memory: each method borrows a 64 KiB buffer from a pool while it runs;
// CopyReplies holds at most 8 MiB more, and only while a CLUSTER reply that is
// being rewritten arrives.
type Conn struct {
	opts Options
	log  *slog.Logger

	mu sync.Mutex
	// mu guards the following.
	queue []entry

	queued      atomic.Int32 // len(queue), read without mu by the reply side
	outstanding atomic.Int64 // entries enqueued and not yet consumed
	replyRaw    atomic.Bool  // the reply side copies raw: the request side may stop parsing

	req reqParser   // owned by CopyRequests
	rep replyParser // owned by CopyReplies
}

// NewConn returns a Conn for one client connection.
func NewConn(opts Options) *Conn {
	c := &Conn{opts: opts, log: opts.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("component", "resp")
	c.req.c = c
	c.rep.c = c
	return c
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// CopyRequests copies client-to-server bytes unchanged from src to dst while
// parsing commands to learn which replies need rewriting. It writes what it has
// read before reading again. It returns when src returns an error (nil for io.EOF)
// or dst fails.
func (c *Conn) CopyRequests(dst io.Writer, src io.Reader) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	p := &c.req
	p.off = p.off || c.opts.Map == nil
	var written int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if !p.off {
				if c.replyRaw.Load() {
					p.off = true
				} else {
					p.feed(buf[:n])
				}
			}
			w, werr := dst.Write(buf[:n])
			written += int64(w)
			if werr == nil && w != n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return written, werr
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return written, nil
			}
			return written, rerr
		}
	}
}

// enqueue hands an entry to the reply side. It reports false, after switching the
// request side off, when too many entries are outstanding.
func (c *Conn) enqueue(e entry) bool {
	if c.outstanding.Add(1) > maxPending {
		e = entry{idx: e.idx, kind: kUnpair}
		c.log.Debug("too many outstanding topology replies; no longer pairing replies")
	}
	c.mu.Lock()
	c.queue = append(c.queue, e)
	c.queued.Store(int32(len(c.queue)))
	c.mu.Unlock()
	return e.kind != kUnpair
}

// takeQueue moves the entries enqueued so far to the end of dst.
func (c *Conn) takeQueue(dst []entry) []entry {
	c.mu.Lock()
	dst = append(dst, c.queue...)
	clear(c.queue)
	c.queue = c.queue[:0]
	c.queued.Store(0)
	c.mu.Unlock()
	return dst
}

// redirect reports to OnRedirect.
func (c *Conn) redirect(kind string, slot int, upstream string) {
	if c.opts.OnRedirect != nil {
		c.opts.OnRedirect(kind, slot, upstream)
	}
}
