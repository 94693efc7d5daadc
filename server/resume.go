package server

// Resumable streams on the gateway (tunnel/PROTOCOL.md, "Resumable
// streams"). A session whose Hello asked for resumption gets a
// control.Link, and its proxy streams opened with a version 2 header are
// tunnel.Resumables. Their relays run in the server's goroutine group, not
// the session's: when the session ends (any cause but the gateway
// stopping, a drain or a revocation) its streams detach and stay in the
// gateway's resume table, upstream connection open, until a resume open
// on a new session of the same key re-attaches them or resume_grace
// passes. Replay memory is bounded per stream (resume_buffer), per key
// (resume_memory_per_key) and per gateway (resume_memory).

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/tunnel"
)

// errRevokedStream ends the resumable streams of a revoked key.
var errRevokedStream = errors.New("access revoked by the gateway")

// errDrained ends the resumable streams still open when a drain cuts.
var errDrained = errors.New("the gateway is shutting down")

type resumeKey struct {
	fp string
	id uint64
}

// heldStream is one resumable stream of the gateway, attached to a
// session or held for a resume.
type heldStream struct {
	r      *tunnel.Resumable
	key    resumeKey
	token  tunnel.ResumeToken
	ident  *auth.Identity
	ip     net.IP
	t      *target
	node   string
	cancel context.CancelFunc // ends the relay

	mu    sync.Mutex // guards owner and live: attach and detach
	owner *session
	live  *liveStream
}

// resumeTable holds every resumable stream of the gateway.
type resumeTable struct {
	mu     sync.Mutex
	m      map[resumeKey]*heldStream
	budget *tunnel.ResumeBudget
	perKey map[string]*tunnel.ResumeBudget
	keyN   map[string]int // streams per key, attached or held
	closed bool           // the gateway drains or stopped: no new ones
}

func newResumeTable(l Limits) *resumeTable {
	return &resumeTable{m: make(map[resumeKey]*heldStream), budget: tunnel.NewResumeBudget(l.ResumeMemory),
		perKey: make(map[string]*tunnel.ResumeBudget), keyN: make(map[string]int)}
}

// add records a new resumable stream; false if the key already has one
// with that id, or maxStreams (attached or held), or the table is closed.
// A key's sessions bound its attached streams, but not those held after
// sessions died: without maxStreams a client that opens streams and drops
// its session again and again would hold upstream connections without
// bound for resume_grace.
func (rt *resumeTable) add(h *heldStream, perKey, maxStreams int) (*tunnel.ResumeBudget, bool) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if _, dup := rt.m[h.key]; dup || rt.closed || rt.keyN[h.key.fp] >= maxStreams {
		return nil, false
	}
	rt.m[h.key] = h
	rt.keyN[h.key.fp]++
	b := rt.perKey[h.key.fp]
	if b == nil {
		b = rt.budget.Child(perKey)
		rt.perKey[h.key.fp] = b
	}
	return b, true
}

func (rt *resumeTable) remove(h *heldStream) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.m[h.key] == h {
		delete(rt.m, h.key)
		if rt.keyN[h.key.fp]--; rt.keyN[h.key.fp] <= 0 {
			delete(rt.keyN, h.key.fp)
		}
	}
}

func (rt *resumeTable) lookup(k resumeKey) *heldStream {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.m[k]
}

// endAll ends every stream (drain cut, Close) and takes no new ones: an
// attached stream is reset, so that the client closes its local
// connection, and the Reset is on its way before the sessions close.
func (rt *resumeTable) endAll() {
	rt.mu.Lock()
	rt.closed = true
	hs := make([]*heldStream, 0, len(rt.m))
	for _, h := range rt.m {
		hs = append(hs, h)
	}
	rt.mu.Unlock()
	links := make(map[*control.Link]bool)
	for _, h := range hs {
		h.mu.Lock()
		if h.owner != nil {
			links[h.owner.link] = true
		}
		h.mu.Unlock()
		h.r.Abort()
		h.cancel()
	}
	for l := range links {
		l.Flush()
	}
}

// judgeHeld ends the detached streams whose key ak no longer authorizes
// (a reload): a revoked key must not resume, and its upstream
// connections close now.
func (rt *resumeTable) judgeHeld(ak *auth.AuthorizedKeys, log *slog.Logger) {
	rt.mu.Lock()
	hs := make([]*heldStream, 0, len(rt.m))
	for _, h := range rt.m {
		hs = append(hs, h)
	}
	rt.mu.Unlock()
	now := time.Now()
	for _, h := range hs {
		h.mu.Lock()
		held := h.owner == nil
		h.mu.Unlock()
		if !held {
			continue // its session's own judgement decides
		}
		if _, err := ak.Authorize(presented(h.ident), h.ip, now); err != nil {
			log.Warn("held stream closed: its key is no longer authorized", "stream", h.key.id, keyKeyFP, h.key.fp, keyTarget, h.t.name, keyErr, err)
			h.r.Fail(errRevokedStream)
			h.cancel()
		}
	}
}

// attachLocked makes ss the owner of h: the session's link carries its
// acks, a revocation of the session cuts it. h.mu is held.
func (h *heldStream) attachLocked(ss *session) {
	h.owner = ss
	ss.streams.n.Add(1) // counts against max_streams_per_session while attached
	h.live = &liveStream{t: h.t, node: h.node, cancel: h.cancel}
	ss.liveMu.Lock()
	ss.live[h.live] = struct{}{}
	ss.liveMu.Unlock()
	if !ss.link.Add(h.r) { // the session ended meanwhile: held
		h.detachLocked()
		h.r.Detach()
	}
}

// detachLocked forgets the owner. h.mu is held.
func (h *heldStream) detachLocked() {
	ss := h.owner
	if ss == nil {
		return
	}
	h.owner = nil
	ss.streams.n.Add(-1)
	ss.liveMu.Lock()
	delete(ss.live, h.live)
	ss.liveMu.Unlock()
	ss.link.Remove(h.r)
}

// holdStreams runs when the session ends: its resumable streams detach
// and wait for a resume, unless the session was revoked or the gateway
// stops (then they end at both ends).
func (ss *session) holdStreams() {
	if ss.link == nil {
		return
	}
	rs := ss.link.DetachAll()
	s := ss.srv
	final := ss.revoked.Load()
	select {
	case <-s.draining:
		final = true
	default:
	}
	for _, r := range rs {
		h := s.resume.lookup(resumeKey{ss.ident.Fingerprint, r.ID()})
		if h == nil {
			continue
		}
		h.mu.Lock()
		if h.owner == ss {
			h.detachLocked()
			if final {
				r.Fail(errRevokedStream)
			} else {
				r.Detach()
			}
		}
		h.mu.Unlock()
	}
	if len(rs) > 0 && !final {
		ss.log.Info("session ended: resumable streams held for a resume", "streams", len(rs), "resume_grace", s.config().Limits.ResumeGrace)
	}
}

// serveResumable serves an accepted resumable proxy stream: it records it
// in the resume table and returns its relay, counted in the server's
// goroutine group, so that it outlives the session (nil: refused). The
// caller runs it once it has left the session's group.
func (ss *session) serveResumable(st tunnel.Stream, up net.Conn, t *target, node string, req tunnel.OpenRequest, log *slog.Logger, start time.Time) func() {
	s := ss.srv
	lim := s.config().Limits
	h := &heldStream{key: resumeKey{ss.ident.Fingerprint, req.ID}, token: req.Token, ident: ss.identity(),
		ip: remoteIP(ss.sess.RemoteAddr()), t: t, node: node}
	budget, ok := s.resume.add(h, lim.ResumeMemoryPerKey, lim.MaxSessionsPerKey*lim.MaxStreamsPerSession)
	if !ok {
		st.Abort()
		up.Close()
		log.Warn("resumable stream refused: its id is in use by this key, the key holds max_sessions_per_key × max_streams_per_session resumable streams, or the gateway stops", "stream", req.ID)
		return nil
	}
	rctx, cancel := context.WithCancel(t.resumeParent(ss.srvCtx)) // ends with the server, or when a reload retires the target
	h.cancel = cancel
	h.r = tunnel.NewResumable(tunnel.ResumableConfig{ID: req.ID, Token: req.Token, Buffer: lim.ResumeBuffer,
		Budget: budget, Grace: lim.ResumeGrace, OnEnd: func(*tunnel.Resumable, error) {
			s.resume.remove(h)
			cancel()
			// OnEnd may run under h.mu (a failed Attach, a session's
			// end): then, or while another holds it, the detach waits
			// for it in a goroutine of its own. Nothing else that calls
			// OnEnd holds a lock that h.mu comes before.
			if h.mu.TryLock() {
				h.detachLocked()
				h.mu.Unlock()
				return
			}
			go func() {
				h.mu.Lock()
				h.detachLocked()
				h.mu.Unlock()
			}()
		}}, st, ss.link)
	h.mu.Lock()
	h.attachLocked(ss)
	h.mu.Unlock()
	if !s.addSession() { // draining: no goroutine joins the group any more
		h.r.Fail(errDrained)
		up.Close()
		return nil
	}
	s.streams.add(1)
	m := s.metrics
	transport := ss.sess.Transport()
	active := m.streams.WithLabelValues(transport, t.name)
	active.Inc()
	return func() {
		defer s.wg.Done()
		defer s.streams.add(-1)
		defer active.Dec()
		// The relay runs on a small frame (serveStream says why); the
		// report of its end is a function of its own.
		res := tunnel.Relay(rctx, up, h.r, nil, tunnel.IdleTimeout(lim.IdleTimeout))
		cancel()
		ss.resumableEnded(h, res, log, start, lim.ResumeGrace)
	}
}

// resumableEnded counts and logs the end of a resumable stream.
//
//go:noinline
func (ss *session) resumableEnded(h *heldStream, res tunnel.RelayResult, log *slog.Logger, start time.Time, grace time.Duration) {
	// The stream's own error, not only the relay's: OnEnd's cancel may
	// end the relay before its copies read the expiry.
	if errors.Is(res.Err, tunnel.ErrResumeExpired) || errors.Is(h.r.Err(), tunnel.ErrResumeExpired) {
		log.Warn("resumable stream closed: the client did not resume it within resume_grace; upstream connection closed",
			"stream", h.key.id, "resume_grace", grace)
	}
	ss.endStream(h.t, res, log, start, "stream", h.key.id)
}

// serveResume re-attaches a held stream to this session (a KindResume
// open). The key of the session must be the one that opened the stream,
// and the token the stream's; any refusal is the same "denied", whether
// or not the id exists.
func (ss *session) serveResume(in tunnel.Incoming, req tunnel.OpenRequest) {
	s := ss.srv
	if ss.link == nil {
		in.Reject(tunnel.StatusBadRequest, "this session did not negotiate resumption (Hello resume)")
		return
	}
	h := s.resume.lookup(resumeKey{ss.ident.Fingerprint, req.ID})
	if h == nil || subtle.ConstantTimeCompare(h.token[:], req.Token[:]) != 1 || h.r.Err() != nil ||
		!ss.identity().Allows(h.t.name) || mayOpen(ss.identity(), h.t, h.node) != nil {
		ss.log.Warn("resume refused: no stream of this key with that id and token, or no longer allowed", "stream", req.ID)
		in.Reject(tunnel.StatusDenied, "no stream to resume")
		return
	}
	st, err := in.Accept()
	if err != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	// The old session may not have noticed its end yet (a black hole): the
	// client left it, so it is closed, which also releases a read blocked
	// on the stream there (an SSH channel's Read returns only when its
	// connection ends).
	if old := h.owner; old != nil && old != ss {
		old.log.Info("session closed: its client resumed a stream on a new session", "stream", req.ID, "new_session", ss.id)
		old.setEnd("replaced", "the client resumed its streams on a new session")
		go old.sess.Close()
	}
	h.detachLocked()
	h.r.Detach()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], h.r.Recv())
	_ = st.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := st.Write(b[:]); err != nil {
		st.Abort()
		ss.log.Warn("resume failed: write the gateway's counter", "stream", req.ID, keyErr, err)
		return
	}
	_ = st.SetWriteDeadline(time.Time{})
	if err := h.r.Attach(st, req.Recv, ss.link); err != nil {
		ss.log.Warn("resume failed", "stream", req.ID, keyTarget, h.t.name, keyErr, err)
		return
	}
	h.attachLocked(ss)
	ss.log.Info("stream resumed", "stream", req.ID, keyTarget, h.t.name, keyNode, h.node, "client_recv", req.Recv)
}

// newLink returns the session's resume link, writing on its control
// stream.
func (ss *session) newLink(c *control.Conn) *control.Link {
	return control.NewLink(func(frames []byte) error {
		return c.WriteFrames(frames, 10*time.Second)
	})
}

// resumeGrace is what the Welcome says of resumption: the grace in ms,
// or 0 when resume_grace is 0 (off).
func resumeGraceMS(l Limits) int64 { return l.ResumeGrace.Milliseconds() }
