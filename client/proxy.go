package client

// The proxy step: every local listener's accept loop hands each connection
// to serveLocal, which opens a stream to the node through the current
// session and relays the connection over it, through the rewriter the
// target's type needs (none, RESP for Redis Cluster, memcached for an
// auto-discovery configuration endpoint). The open header goes out with
// the connection's first bytes (tunnel.Relay); the gateway's side is
// server/session.go.

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/cachetun/cachetun/client/memcache"
	"github.com/cachetun/cachetun/client/resp"
	"github.com/cachetun/cachetun/tunnel"
)

func (c *Client) acceptLoop(v *targetView, l *localListener) {
	defer c.wg.Done()
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			c.log.Warn("accept local connection", "err", err)
			select { // e.g. out of file descriptors: let some close
			case <-c.runCtx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		c.wg.Add(1)
		tunnel.Go(func() {
			defer c.wg.Done()
			c.serveLocal(nc, v, l.node)
		})
	}
}

// serveLocal carries one local connection to node through the session.
// Its frame stays small: the relay's write path (a Resumable, the
// transport's stream, quic-go's or yamux's send) runs on top of it, and a
// goroutine whose stack outgrows its start copies it, once per connection
// (tunnel.Go), and an idle connection keeps the larger stack. The open and
// the report of the end are functions of their own, out of the relay's
// way.
func (c *Client) serveLocal(nc net.Conn, v *targetView, node string) {
	c.open.Add(1)
	defer c.open.Add(-1)
	st, rctx, w, resum, cn := c.openLocal(nc, v, node)
	if st == nil {
		return
	}
	defer w.unwatch()
	res := tunnel.Relay(rctx, nc, st, v.rewriter(node))
	c.localEnded(nc, v, node, res, resum, cn)
}

// localLog is the logger of one local connection's lines.
func (c *Client) localLog(nc net.Conn, v *targetView, node string) *slog.Logger {
	return c.log.With("target", v.name, "node", node, "local", nc.RemoteAddr().String())
}

// openLocal opens the stream of a local connection: resumable when the
// session's gateway resumes streams. On failure it closes nc, says why and
// returns a nil stream.
//
//go:noinline
func (c *Client) openLocal(nc net.Conn, v *targetView, node string) (tunnel.Stream, context.Context, *watchedStream, *localStream, *conn) {
	ctx := c.runCtx
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	cn, err := c.session(ctx)
	if err != nil {
		c.localLog(nc, v, node).Warn("closing local connection: no session to the gateway", "err", err)
		nc.Close()
		return nil, nil, nil, nil, nil
	}
	// Make sure the gateway is still there (liveness.go); the stream does
	// not wait for the answer.
	cn.live.want("a stream was opened", false)
	w := cn.watch()
	octx, cancel := context.WithTimeout(ctx, c.opts.WaitForSession)
	var (
		st    tunnel.Stream
		rctx  = cn.ctx // a plain stream ends with its session
		resum *localStream
	)
	if cn.link != nil {
		// A resumable stream outlives its session: only Run's end cuts it.
		if resum, err = c.openResumable(octx, cn, w, v.name, node); err == nil {
			st, rctx = resum.r, ctx
		}
	} else {
		st, err = cn.sess.OpenStream(octx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: v.name, Node: node})
	}
	cancel()
	if err != nil {
		w.unwatch()
		c.localLog(nc, v, node).Warn("closing local connection: open stream", "err", err)
		nc.Close()
		return nil, nil, nil, nil, nil
	}
	if resum == nil {
		w.Stream = st
		w.mark.Store(0) // opened; its first write or FlushOpen marks it again
		st = w
	}
	return st, rctx, w, resum, cn
}

// localEnded says how a local connection's relay ended.
//
//go:noinline
func (c *Client) localEnded(nc net.Conn, v *targetView, node string, res tunnel.RelayResult, resum *localStream, cn *conn) {
	se, refused := tunnel.AsStatusError(res.Err)
	switch {
	case refused:
		c.localLog(nc, v, node).Warn("gateway refused the connection", "status", se.Code.String(), "reason", se.Message)
	case errors.Is(res.Err, tunnel.ErrResumeExpired):
		c.localLog(nc, v, node).Warn("closing local connection: its stream was not resumed within the gateway's grace", "stream", resum.r.ID(), "grace", cn.grace)
	case c.log.Enabled(context.Background(), slog.LevelDebug):
		c.localLog(nc, v, node).Debug("connection closed", "bytes_up", res.ConnToStream, "bytes_down", res.StreamToConn, "err", res.Err)
	}
}

// rewriter returns the cache-protocol rewriter of one connection to node,
// nil when the target needs none.
func (v *targetView) rewriter(node string) tunnel.Rewriter {
	t := v.cluster.table.Load()
	if t == nil {
		// The first applyTopology publishes the table before it lets go
		// of v.mu.
		v.mu.Lock()
		t = v.cluster.table.Load()
		v.mu.Unlock()
	}
	switch {
	case t == nil:
	case t.typ == typeRedisCluster:
		return resp.NewConn(resp.Options{
			Map:        v.redisMap(node),
			OnRedirect: v.onRedirect(node),
			Logger:     v.log,
		})
	case t.typ == typeMemcached && t.role[node] == roleConfig:
		return memcache.NewConn(v.memcachedMap)
	}
	return nil
}
