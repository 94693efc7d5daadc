package client

// The first connection's head start. A user starts `cachetun connect` and
// runs redis-cli at once; without help its first request waits for the
// session (handshake, Hello, Welcome), then for its stream. When the local
// port of the first node is known before the Welcome (a connect of one
// target with local_port set), Run listens on it before it dials. On a TLS
// or QUIC session the local connections accepted meanwhile open their
// streams right behind the client's last Hello instead of after the
// Welcome, which saves a round trip: the gateway reads nothing of them
// before it has verified the Hello (on TLS tunnel/gate.go holds them in
// the kernel; on QUIC the gateway buffers the first one, at most
// tunnel.MaxEarlyBytes of it for at most tunnel.EarlyHold, and resets any
// other), then serves them as any stream, or closes them with the session
// if it refuses it. Before the Welcome an early stream carries its header
// and one read of the local connection, at most 16 KiB (CopyRequests).
// Such a stream names node 0 of its target as "0.TARGET:0", which every
// gateway resolves (the form stock OpenSSH clients use); it is a plain
// stream, not resumable, as resumption is agreed on in the Welcome.
//
// A QUIC gateway that holds such a stream says so in the handshake's ALPN
// (certs.ALPNEarly); an older one resets every stream that comes before
// the Welcome, so with it, as on SSH (where the stream channel's open
// costs its own round trip anyway), the early connections wait for the
// Welcome and are served as usual. On QUIC only the first early
// connection goes behind the Hello; later ones wait for the Welcome.
//
// A cache protocol's rewriter (Redis Cluster, memcached discovery) is known
// only from the Welcome. Rewriters pass requests unchanged and only note
// them, so an early stream sends the first request as it came and, once the
// Welcome is in, replays it into the target's rewriter without sending it
// again; replies cannot come before the Welcome, and pass the rewriter
// only once it has seen that request.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"

	"github.com/cachetun/cachetun/certs"
	"github.com/cachetun/cachetun/tunnel"
)

// earlyState is the listener Run opened before the first Welcome.
type earlyState struct {
	ln   net.Listener
	v    *targetView
	port int

	mu      sync.Mutex
	cn      *conn         // the TLS or QUIC session whose last Hello is out
	onQUIC  *conn         // the QUIC session whose one early stream is taken
	ready   chan struct{} // closed when cn is set
	node    string        // node 0's address, once the Welcome was applied
	applied chan struct{} // closed when node is set, or the start failed
	adopted bool          // applyLocked took ln as node 0's listener
	over    bool
}

// listenEarly opens the first node's local port before the first dial,
// when it is known (one target, a local port set); it reports nothing: a
// port that cannot be opened now is opened, or reported, after the Welcome
// as usual.
func (c *Client) listenEarly() {
	if c.opts.List || c.opts.All || len(c.views) != 1 {
		return
	}
	v := c.views[0]
	lp := v.localPort
	if lp == nil {
		lp = c.opts.LocalPort
	}
	if lp == nil || *lp <= 0 {
		return
	}
	ln, err := listenLocal(c.opts.Bind, *lp)
	if err != nil {
		c.log.Debug("local port not opened before the session", "port", *lp, "err", err)
		return
	}
	e := &earlyState{ln: ln, v: v, port: *lp, ready: make(chan struct{}), applied: make(chan struct{})}
	c.mu.Lock()
	c.early = e
	c.mu.Unlock()
	c.wg.Add(1)
	go c.acceptEarly(e)
}

// acceptEarly is the accept loop of the early listener, before and after
// the Welcome.
func (c *Client) acceptEarly(e *earlyState) {
	defer c.wg.Done()
	for {
		nc, err := e.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			c.log.Warn("accept local connection", "err", err)
			continue
		}
		c.wg.Add(1)
		tunnel.Go(func() { // a reused goroutine: see tunnel.Go
			defer c.wg.Done()
			if node, ok := e.nodeNow(); ok {
				c.serveLocal(nc, e.v, node)
				return
			}
			c.serveEarly(nc, e)
		})
	}
}

// nodeNow returns node 0's address once the Welcome was applied.
func (e *earlyState) nodeNow() (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.node, e.node != ""
}

// helloSent offers cn, whose last Hello is out, to the early connections
// (in place of a session before it: one listed gateway refused, the
// client tries the next).
func (e *earlyState) helloSent(cn *conn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.over {
		return
	}
	if e.cn == nil {
		close(e.ready)
	}
	e.cn = cn
}

// takeStream reports whether a connection may open its stream behind the
// Hello on cn: on TLS every one may (the gateway holds them in the
// kernel), on QUIC the first one only (the gateway holds one and resets
// the others).
func (e *earlyState) takeStream(cn *conn) bool {
	if cn.sess.Transport() != TransportQUIC {
		return true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.onQUIC == cn {
		return false
	}
	e.onQUIC = cn
	return true
}

// servesEarly reports whether sess's gateway serves a stream opened right
// behind the Hello: every TLS one (tunnel/gate.go), a QUIC one that agreed
// on certs.ALPNEarly.
func servesEarly(sess tunnel.Session) bool {
	switch sess.Transport() {
	case TransportTLS:
		return true
	case TransportQUIC:
		p, ok := sess.(interface{ NegotiatedProtocol() string })
		return ok && p.NegotiatedProtocol() == certs.ALPNEarly
	}
	return false
}

// adoptLocked hands ln to applyLocked as the listener of node at port, if
// it is this target's first node's port. c.mu is held.
func (e *earlyState) adoptLocked(v *targetView, port int) (net.Listener, bool) {
	if e == nil {
		return nil, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.adopted || e.over || e.v != v || port != e.port {
		return nil, false
	}
	e.adopted = true
	return e.ln, true
}

// done ends the head start: with the first node's address after the first
// Welcome (the listener, if applyLocked did not take it, closes: its
// connections are then served on node 0 as well), or with "" when the
// start failed.
func (e *earlyState) done(node string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.over {
		return
	}
	e.over = true
	e.node = node
	close(e.applied)
	if !e.adopted || node == "" {
		e.ln.Close()
	}
}

// serveEarly carries a connection accepted before the first Welcome: on a
// TLS session behind its last Hello, else as usual once the Welcome is in.
func (c *Client) serveEarly(nc net.Conn, e *earlyState) {
	ctx := c.runCtx
	select {
	case <-e.ready:
	case <-e.applied:
	case <-ctx.Done():
	}
	if node, ok := e.nodeNow(); ok {
		c.serveLocal(nc, e.v, node)
		return
	}
	e.mu.Lock()
	cn := e.cn
	e.mu.Unlock()
	if cn != nil && isDone(cn.sess.Done()) {
		// That gateway refused the Hello; another listed one may not.
		c.serveAfterWelcome(ctx, nc, e)
		return
	}
	if cn == nil || ctx.Err() != nil { // the start failed
		nc.Close()
		return
	}
	if !e.takeStream(cn) { // a QUIC gateway holds one only
		c.serveAfterWelcome(ctx, nc, e)
		return
	}
	c.open.Add(1)
	defer c.open.Add(-1)
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	v := e.v
	log := c.log.With("target", v.name, "node", "0", "local", nc.RemoteAddr().String())
	st, err := cn.sess.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Node: earlyNode(v.name)})
	if err != nil {
		log.Warn("closing local connection: open stream", "err", err)
		nc.Close()
		return
	}
	// A plain stream ends with its session.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-cn.sess.Done():
			cancel()
		case <-rctx.Done():
		}
	}()
	res := tunnel.Relay(rctx, nc, st, &earlyRewriter{e: e, sess: cn.sess, ctx: rctx, replayed: make(chan struct{})})
	if se, refused := tunnel.AsStatusError(res.Err); refused {
		log.Warn("gateway refused the connection", "status", se.Code.String(), "reason", se.Message)
		return
	}
	if tunnel.HeldStreamDropped(res.Err) {
		log.Warn("closing local connection: the gateway dropped it, as it was opened before the session was up and the gateway took longer than "+
			tunnel.EarlyHold.String()+" to authenticate it; connect again (if this recurs, the gateway is overloaded: tell its operator)", "err", res.Err)
		return
	}
	log.Debug("connection closed", "bytes_up", res.ConnToStream, "bytes_down", res.StreamToConn, "err", res.Err)
}

// serveAfterWelcome serves nc as usual once the first Welcome is applied,
// or closes it if the start failed.
func (c *Client) serveAfterWelcome(ctx context.Context, nc net.Conn, e *earlyState) {
	select {
	case <-e.applied:
	case <-ctx.Done():
	}
	if node, ok := e.nodeNow(); ok {
		c.serveLocal(nc, e.v, node)
		return
	}
	nc.Close()
}

// earlyNode names node 0 of target in an open header, as every gateway
// resolves it before the client knows the node's address.
func earlyNode(target string) string { return net.JoinHostPort("0."+target, strconv.Itoa(0)) }

// errNoWelcome: the session of an early stream ended before its Welcome.
var errNoWelcome = errors.New("the session ended before the gateway's welcome")

// earlyRewriter relays an early stream: the first request goes out at
// once; the rest of both directions waits for the Welcome and passes the
// target's rewriter, if it has one.
type earlyRewriter struct {
	e    *earlyState
	sess tunnel.Session
	ctx  context.Context

	once sync.Once
	rw   tunnel.Rewriter
	err  error

	replayed   chan struct{} // closed once the rewriter saw the first request
	replayOnce sync.Once
}

// rewriter waits for the Welcome and returns the target's rewriter (nil:
// none).
func (r *earlyRewriter) rewriter() (tunnel.Rewriter, error) {
	r.once.Do(func() {
		select {
		case <-r.e.applied:
			node, ok := r.e.nodeNow()
			if !ok {
				r.err = errNoWelcome
				return
			}
			r.rw = r.e.v.rewriter(node)
		case <-r.sess.Done():
			r.err = errNoWelcome
		case <-r.ctx.Done():
			r.err = r.ctx.Err()
		}
	})
	return r.rw, r.err
}

func (r *earlyRewriter) CopyRequests(dst io.Writer, src io.Reader) (int64, error) {
	defer r.replayDone()
	buf := make([]byte, 16<<10)
	n, rerr := src.Read(buf)
	var written int64
	if n > 0 {
		w, err := dst.Write(buf[:n])
		written += int64(w)
		if err != nil {
			return written, err
		}
	}
	if rerr != nil && rerr != io.EOF {
		return written, rerr
	}
	rw, err := r.rewriter()
	if err != nil {
		return written, err
	}
	rest := src
	if rerr == io.EOF {
		rest = eofReader{}
	}
	if rw == nil {
		r.replayDone()
		m, err := io.Copy(dst, rest)
		return written + m, err
	}
	if n == 0 {
		r.replayDone()
		return rw.CopyRequests(dst, rest)
	}
	// The rewriter notes each request before it writes it: once it has
	// written the replayed bytes (dropped: they went out already), it
	// knows the requests whose replies are coming.
	sw := &skipWriter{w: dst, skip: n, done: r.replayDone}
	_, err = rw.CopyRequests(sw, io.MultiReader(bytes.NewReader(buf[:n]), rest))
	return written + sw.n, err
}

func (r *earlyRewriter) replayDone() { r.replayOnce.Do(func() { close(r.replayed) }) }

func (r *earlyRewriter) CopyReplies(dst io.Writer, src io.Reader) (int64, error) {
	rw, err := r.rewriter()
	if err != nil {
		return 0, err
	}
	if rw == nil {
		return io.Copy(dst, src)
	}
	// Not before the rewriter has seen the requests that went out before
	// it existed: it pairs each reply with its request.
	select {
	case <-r.replayed:
	case <-r.ctx.Done():
		return 0, r.ctx.Err()
	}
	return rw.CopyReplies(dst, src)
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// skipWriter drops the first skip bytes written (already sent), calls
// done once it has, and counts what it really wrote.
type skipWriter struct {
	w    io.Writer
	skip int
	done func()
	n    int64
}

func (s *skipWriter) Write(p []byte) (int, error) {
	k := min(s.skip, len(p))
	s.skip -= k
	if s.skip == 0 && s.done != nil {
		s.done()
	}
	if k == len(p) {
		return len(p), nil
	}
	m, err := s.w.Write(p[k:])
	s.n += int64(m)
	return k + m, err
}

// earlyDone ends the head start after the first Welcome was applied.
func (c *Client) earlyDone() {
	c.mu.Lock()
	e := c.early
	node := ""
	if e != nil && len(e.v.order) > 0 {
		node = e.v.order[0]
	}
	c.mu.Unlock()
	if e != nil {
		e.done(node)
	}
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
