package client

// Resumable streams on the client (tunnel/PROTOCOL.md, "Resumable
// streams"). When the gateway's Welcome offers resumption, every local
// connection rides a tunnel.Resumable: when its session dies the local
// connection stays open and the stream detaches; once the supervisor has
// a new session (Run's loop) every detached stream is re-attached by a
// resume open. A refusal, or a grace that runs out first, closes the
// local connection with a log line.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"time"

	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/tunnel"
)

// localStream is one resumable stream of a local connection.
type localStream struct {
	r            *tunnel.Resumable
	target, node string
}

// resumeState is the client's set of resumable streams.
type resumeState struct {
	ids     map[uint64]*localStream // every live one, for unique ids
	pending []*localStream          // detached, waiting for a session
	// opened: a resumable stream was opened in this Run, so the gateway
	// may hold or be told of some (goodbye must flush its Resets even when
	// every stream has ended already: an aborted one queues its Reset
	// and leaves ids at once).
	opened bool
}

// linkSession gives cn a resume link when its Welcome offered
// resumption.
func (c *Client) linkSession(cn *conn, w *control.Welcome) {
	if w == nil || w.ResumeGraceMS <= 0 || c.opts.NoResume {
		return
	}
	cn.grace = time.Duration(w.ResumeGraceMS) * time.Millisecond
	cn.link = control.NewLink(func(frames []byte) error {
		cn.ctrlMu.Lock()
		defer cn.ctrlMu.Unlock()
		_ = cn.ctrl.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, err := cn.ctrl.Write(frames)
		_ = cn.ctrl.SetWriteDeadline(time.Time{})
		return err
	})
}

// watchedUnder is the underlying stream of a Resumable on one session,
// watched by that session's liveness (liveness.go): its writes and reads
// are the real ones, not the replay buffer's. It leaves the watch when the
// Resumable lets go of it.
type watchedUnder struct{ *watchedStream }

func (u watchedUnder) Abort() { u.unwatch(); u.watchedStream.Abort() }

func (u watchedUnder) Close() error { u.unwatch(); return u.watchedStream.Close() }

// openResumable opens a resumable stream to node of target on cn; w is
// its watch on cn's liveness.
func (c *Client) openResumable(ctx context.Context, cn *conn, w *watchedStream, target, node string) (*localStream, error) {
	ls := &localStream{target: target, node: node}
	var token tunnel.ResumeToken
	_, _ = rand.Read(token[:])
	c.mu.Lock()
	id := mrand.Uint64()
	for c.resume.ids[id] != nil || id == 0 {
		id = mrand.Uint64()
	}
	c.resume.ids[id] = ls
	c.resume.opened = true
	c.mu.Unlock()
	st, err := cn.sess.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: target, Node: node,
		Resumable: true, ID: id, Token: token})
	if err != nil {
		c.forgetStream(id)
		return nil, err
	}
	w.Stream = st
	w.mark.Store(0) // opened; its first write or FlushOpen marks it again
	ls.r = tunnel.NewResumable(tunnel.ResumableConfig{ID: id, Token: token, Grace: cn.grace,
		OnEnd: func(r *tunnel.Resumable, _ error) {
			c.forgetStream(r.ID())
			cn.link.Remove(r)
		}}, watchedUnder{w}, cn.link)
	if !cn.link.Add(ls.r) { // the session died meanwhile
		ls.r.Detach()
		c.holdStream(ls)
	}
	return ls, nil
}

func (c *Client) forgetStream(id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.resume.ids, id)
}

// holdStream queues a detached stream for the next session, and resumes
// it at once if that session is up already.
func (c *Client) holdStream(ls ...*localStream) {
	c.mu.Lock()
	c.resume.pending = append(c.resume.pending, ls...)
	cur := c.cur
	c.mu.Unlock()
	if cur != nil {
		select {
		case <-cur.sess.Done():
		default:
			c.resumeOn(cur)
		}
	}
}

// detachStreams detaches the resumable streams of a session that died
// and queues them for the next one.
func (c *Client) detachStreams(cn *conn) {
	if cn.link == nil {
		return
	}
	rs := cn.link.DetachAll()
	if len(rs) == 0 {
		return
	}
	held := make([]*localStream, 0, len(rs))
	for _, r := range rs {
		r.Detach()
	}
	c.mu.Lock()
	for _, r := range rs {
		if ls := c.resume.ids[r.ID()]; ls != nil {
			held = append(held, ls)
		}
	}
	c.mu.Unlock()
	c.log.Info("session lost: local connections kept, their streams wait for the next session", "streams", len(held), "grace", cn.grace)
	c.holdStream(held...)
}

// resumeOn re-attaches every queued stream on cn, each in its own
// goroutine.
func (c *Client) resumeOn(cn *conn) {
	c.mu.Lock()
	pending := c.resume.pending
	c.resume.pending = nil
	c.mu.Unlock()
	for _, ls := range pending {
		if cn.link == nil {
			c.log.Warn("closing local connection: the new session's gateway does not resume streams", "target", ls.target, "node", ls.node, "stream", ls.r.ID())
			ls.r.Fail(errNoResume)
			continue
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.resumeOne(cn, ls)
		}()
	}
}

var errNoResume = errors.New("the gateway does not resume streams")

// resumeOne sends the resume open of ls on cn and re-attaches it.
func (c *Client) resumeOne(cn *conn, ls *localStream) {
	r := ls.r
	if r.Err() != nil {
		return // its grace ran out, or the application closed it
	}
	log := c.log.With("target", ls.target, "node", ls.node, "stream", r.ID())
	octx, cancel := context.WithTimeout(cn.ctx, c.opts.DialTimeout)
	defer cancel()
	w := cn.watch()
	ost, err := cn.sess.OpenStream(octx, tunnel.OpenRequest{Kind: tunnel.KindResume, Resumable: true,
		ID: r.ID(), Token: r.Token(), Recv: r.Recv()})
	if err != nil {
		w.unwatch()
		log.Debug("resume open failed: retried on the next session", "err", err)
		c.holdLater(cn, ls)
		return
	}
	w.Stream = ost
	st := watchedUnder{w}
	var b [8]byte
	_ = st.SetReadDeadline(time.Now().Add(c.opts.DialTimeout))
	_, err = io.ReadFull(st, b[:])
	var se *tunnel.StatusError
	switch {
	case errors.As(err, &se):
		st.Abort()
		log.Warn("closing local connection: the gateway refused to resume its stream (grace over, key changed, or a restarted gateway)", "status", se.Code.String())
		r.Fail(fmt.Errorf("resume refused: %w", err))
		return
	case err != nil:
		st.Abort()
		log.Debug("resume failed: retried on the next session", "err", err)
		c.holdLater(cn, ls)
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	if err := r.Attach(st, binary.BigEndian.Uint64(b[:]), cn.link); err != nil {
		log.Warn("closing local connection: resume failed", "err", err)
		return
	}
	if !cn.link.Add(r) {
		r.Detach()
		c.holdLater(cn, ls)
		return
	}
	log.Info("stream resumed on the new session", "transport", cn.sess.Transport())
}

// holdLater queues ls again once cn is gone (a resume that failed with
// the session it was tried on).
func (c *Client) holdLater(cn *conn, ls *localStream) {
	select {
	case <-cn.sess.Done():
	case <-c.runCtx.Done():
		return
	case <-time.After(time.Second): // a live session that failed the open: try again
	}
	c.holdStream(ls)
}

// goodbye ends every resumable stream at the gateway before Run closes
// its sessions: a client that stops takes its connections with it, so the
// gateway must hold nothing for a resume. The Resets go out on each
// control stream, which is then half-closed (the gateway reads them in
// order, then ends the session); it waits for the gateway at most 1 s.
func (c *Client) goodbye() {
	c.mu.Lock()
	streams := make([]*localStream, 0, len(c.resume.ids))
	for _, ls := range c.resume.ids {
		if ls.r != nil {
			streams = append(streams, ls)
		}
	}
	conns := make([]*conn, 0, len(c.conns))
	for cn := range c.conns {
		if cn.link != nil {
			conns = append(conns, cn)
		}
	}
	opened := c.resume.opened
	c.mu.Unlock()
	if !opened {
		return
	}
	for _, ls := range streams {
		ls.r.Abort()
	}
	for _, cn := range conns {
		cn.link.Flush()
		cn.ctrlMu.Lock()
		_ = cn.ctrl.CloseWrite()
		cn.ctrlMu.Unlock()
	}
	deadline := time.After(time.Second)
	for _, cn := range conns {
		select {
		case <-cn.sess.Done():
		case <-deadline:
			return
		}
	}
}
