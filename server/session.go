package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/tunnel"
)

// session is one client session on the gateway.
type session struct {
	srv     *Server
	sess    tunnel.Session
	id      string
	log     *slog.Logger
	ident   *auth.Identity
	started time.Time

	streams   streamCount  // open now; also counted in Server.streams
	opened    atomic.Int64 // total
	bytesUp   atomic.Int64
	bytesDown atomic.Int64

	// ctx ends the session's work (cancel); wg holds its goroutines.
	// srvCtx is the server's: resumable relays outlive the session.
	srvCtx  context.Context
	link    *control.Link // resumable streams' acks; nil: not negotiated
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	release func() // frees the unauthenticated slot; idempotent
	isUp    bool   // registered, see up; only the session goroutine touches it
	limited bool   // refused for its source's failed authentications

	ctrlMu    sync.Mutex // guards the following
	ctrl      *control.Conn
	ctrlState *ctrlState // what the control loop serves, set by Admit
	gone      bool       // GoAway sent
	target    string     // the control stream's targets, once allowed, comma-separated
	targets   []string   // the same as a list
	all       bool       // the Hello asked for every allowed target
	endResult string     // why the session ended, for the session end line
	endReason string
	endErr    error // the first transport error that ended it

	countOnce sync.Once
	counted   []string // label values of cachetun_sessions, once counted

	// judged is the identity as the last judgement found it (nil: ident).
	// See revoke.go.
	judged  atomic.Pointer[auth.Identity]
	rejudge chan struct{} // signalled by ReloadKeys
	// judgedOK is signalled after a judgement that let the session go on:
	// the control loop tells the client of targets it took away.
	judgedOK chan struct{}
	revoked  atomic.Bool // no new streams: the session is ending
	liveMu   sync.Mutex  // guards live
	live     map[*liveStream]struct{}
	revokeMu sync.Mutex // held while the session is being ended
}

// setEnd records why the session ends, for the "session end" line; the
// first call wins.
func (ss *session) setEnd(result, reason string) {
	ss.ctrlMu.Lock()
	defer ss.ctrlMu.Unlock()
	if ss.endResult == "" {
		ss.endResult, ss.endReason = result, reason
	}
}

// noteEndErr records the first transport error seen by the session's loops.
func (ss *session) noteEndErr(err error) {
	ss.ctrlMu.Lock()
	defer ss.ctrlMu.Unlock()
	if ss.endErr == nil {
		ss.endErr = err
	}
}

// ending says how the session ended: a result from a fixed set (closed,
// shutdown, timeout, refused, error, or one recorded with setEnd) and a
// reason for people.
func (ss *session) ending(ctx context.Context) (result, reason string) {
	ss.ctrlMu.Lock()
	result, reason, err := ss.endResult, ss.endReason, ss.endErr
	ss.ctrlMu.Unlock()
	if result != "" {
		return result, reason
	}
	select {
	case <-ss.srv.draining:
		return "shutdown", "the gateway is shutting down"
	default:
	}
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		return "shutdown", "the gateway stopped"
	case err == nil || tunnel.ClosedByPeer(err):
		return "closed", "the client closed the session"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout", "nothing heard from the client within the transport's idle timeout"
	}
	return "error", err.Error()
}

// countSession counts the session in cachetun_sessions under target, the
// first time it is called: when the target is known (Hello), or at the
// first stream of a session that names none (stock OpenSSH).
func (ss *session) countSession(target string) {
	ss.countOnce.Do(func() {
		m := ss.srv.metrics
		ss.counted = m.labels(ss, ss.sess.Transport(), target)
		m.sessions.WithLabelValues(ss.counted...).Inc()
		m.sessionsTotal.WithLabelValues(ss.counted...).Inc()
	})
}

// uncountSession undoes countSession when the session ends.
func (ss *session) uncountSession() {
	ss.countOnce.Do(func() {}) // no count after this
	if ss.counted != nil {
		ss.srv.metrics.sessions.WithLabelValues(ss.counted...).Dec()
	}
}

func (s *Server) serveSession(ctx context.Context, ts tunnel.Session, release func()) {
	defer ts.Close()
	defer release() // idempotent; authentication releases it sooner
	ss := &session{srv: s, sess: ts, id: newSessionID(), started: time.Now(), release: release,
		streams: streamCount{total: &s.streams},
		rejudge: make(chan struct{}, 1), judgedOK: make(chan struct{}, 1), live: make(map[*liveStream]struct{})}
	ss.log = s.log.With(keySession, ss.id, keyTransport, ts.Transport(), keyRemote, ts.RemoteAddr().String())
	ss.srvCtx = ctx
	ss.ctx, ss.cancel = context.WithCancel(ctx)
	defer ss.down(ctx) // after the goroutines: the session end line
	defer ss.wg.Wait()
	defer ss.holdStreams() // resumable streams wait for a resume
	defer ss.cancel()

	check, ok := ss.keyCheck()
	if !ok {
		return
	}
	// A session the transport authenticated (SSH) is up before its first
	// stream: a stock OpenSSH client may never open a control stream.
	if ss.ident != nil && !ss.up() {
		return
	}
	if !ss.first(check) {
		if !ss.isUp && !ss.limited {
			// A refused key, a timeout or an end of the connection
			// before a verified Hello: one failure per session.
			s.authFailed(remoteIP(ts.RemoteAddr()))
		}
		return
	}
	ss.acceptStreams()
}

// keyCheck returns how the session's Hello proves the key: by its
// signature of the session binding, or (SSH) not at all, because the
// transport's handshake verified the key and recorded its identity.
func (ss *session) keyCheck() (control.KeyCheck, bool) {
	pa, ok := ss.sess.(tunnel.PreAuthenticated)
	if !ok {
		return control.Signature(ss.sess.Binding()), true
	}
	id, _ := pa.AuthInfo().(*auth.Identity)
	if id == nil {
		ss.log.Error("transport reported no identity")
		return control.KeyCheck{}, false
	}
	ss.ident = id
	return control.TransportVerified(), true
}

// up starts a session whose key is authorized: only now may the transport
// serve other streams (tunnel.Gated), the unauthenticated slot is freed,
// the per-key session limit applies, and its access is judged from now on
// (watch). It reports whether the session may go on.
func (ss *session) up() bool {
	if ss.isUp {
		return true
	}
	if g, ok := ss.sess.(tunnel.Gated); ok {
		g.Authenticated()
	}
	ss.release()
	if !ss.srv.register(ss) {
		return false
	}
	ss.isUp = true
	ss.log = ss.log.With(identAttrs(ss.ident)...)
	ss.log.Info("session start")
	ss.wg.Go(func() { ss.watch(ss.ctx, ss.cancel) })
	return true
}

// down ends a session that was up: the session end line, and the per-key
// count.
func (ss *session) down(ctx context.Context) {
	if !ss.isUp {
		return
	}
	defer ss.srv.unregister(ss)
	ss.uncountSession()
	result, reason := ss.ending(ctx)
	ss.ctrlMu.Lock()
	target := ss.target
	ss.ctrlMu.Unlock()
	ss.log.Info("session end", keyTarget, target, keyResult, result, keyReason, reason,
		keyDuration, time.Since(ss.started).Round(time.Millisecond),
		"streams", ss.opened.Load(), "bytes_up", ss.bytesUp.Load(), "bytes_down", ss.bytesDown.Load())
}

// first serves the session's first stream. On every transport that is
// its control stream, set up by control.Accept; before the session is up
// (QUIC, TLS) it must be, and it must authenticate within auth_timeout. A
// session the transport authenticated may have none: a stock OpenSSH
// client's first stream is a proxied one. It reports whether the session
// goes on.
func (ss *session) first(check control.KeyCheck) bool {
	s := ss.srv
	deadline := time.Now().Add(s.config().Limits.AuthTimeout)
	actx := ss.ctx
	if !ss.isUp {
		var cancel context.CancelFunc
		actx, cancel = context.WithDeadline(ss.ctx, deadline)
		defer cancel()
	}
	in, err := ss.sess.AcceptStream(actx)
	if err != nil {
		ss.noteEndErr(err)
		if !ss.isUp {
			ss.log.Info("session closed before authentication", keyErr, err)
			s.metrics.authFailures.WithLabelValues("no_hello").Inc()
		}
		return false
	}
	if ss.isUp { // the Hello is due auth_timeout after the stream
		deadline = time.Now().Add(s.config().Limits.AuthTimeout)
	}
	req, err := in.Request(deadline)
	switch {
	case err == nil && req.Kind == tunnel.KindControl:
		return ss.setUp(in, deadline, check)
	case ss.isUp: // a stock client: served like the streams that follow
		return ss.admitStream(in, req, err)
	case err != nil:
		ss.log.Warn("bad first stream", keyErr, err)
		in.Reject(tunnel.StatusBadRequest, "malformed open header")
	default:
		ss.log.Warn("first stream is not the control stream: refused before authentication", keyTarget, req.Target, keyNode, req.Node)
		in.Reject(tunnel.StatusDenied, "authenticate on the control stream first")
	}
	ss.linger()
	return false
}

// setUp sets the session up on its control stream (control.Accept, with
// the session as the Gate) and then serves the control stream.
func (ss *session) setUp(in tunnel.Incoming, deadline time.Time, check control.KeyCheck) bool {
	st, err := in.Accept()
	if err != nil {
		return false
	}
	c := control.NewConn(st)
	ss.ctrlMu.Lock()
	ss.ctrl = c // from now on a revocation tells the client
	ss.ctrlMu.Unlock()
	hello, err := control.Accept(ss.ctx, c, control.Setup{Session: ss.id, Deadline: deadline, Check: check, Gate: ss})
	var ab *control.AbortedError
	switch {
	case errors.As(err, &ab):
		// A client that gives up after a refusal closes the session
		// (QUIC: application error 0, TLS and SSH: EOF); that is no
		// event of its own, the refusal was logged and counted.
		if !tunnel.ClosedByPeer(ab.Err) {
			ss.log.Warn("authentication aborted", keyErr, ab.Err)
		}
		if ab.Hellos == 0 {
			ss.srv.metrics.authFailures.WithLabelValues("no_hello").Inc()
		}
		return false
	case err != nil || hello.List: // refused, or the listing was the answer
		return false
	}
	ss.wg.Go(func() {
		defer ss.sess.Close() // the control stream ending ends the session
		ss.control(ss.ctx, c, hello)
		ss.waitRevoke() // a revocation in progress writes its frame first
	})
	return true
}

// acceptStreams serves the streams the client opens until the session
// ends.
func (ss *session) acceptStreams() {
	for {
		in, err := ss.sess.AcceptStream(ss.ctx)
		if err != nil {
			ss.noteEndErr(err)
			return
		}
		if !ss.admitStream(in, tunnel.OpenRequest{}, errNoRequest) {
			return
		}
	}
}

// errNoRequest says that a stream's open header is still to be read.
var errNoRequest = errors.New("open header not read yet")

// admitStream counts a stream the client opened and serves it, or refuses
// it over the limit. req and reqErr are its open header if already read
// (errNoRequest: not yet). It reports whether the session goes on.
func (ss *session) admitStream(in tunnel.Incoming, req tunnel.OpenRequest, reqErr error) bool {
	s := ss.srv
	limit := int64(s.config().Limits.MaxStreamsPerSession)
	// Every stream counts until it is gone, refused ones too (Reject
	// returns once the transport freed the stream). Over the limit a
	// stream is refused, and counts while it is; a client that keeps as
	// many refused streams open as the limit (a cachetun client closes a
	// refused stream at once) loses the session, so no number of opens
	// holds more than 2 × max_streams_per_session streams.
	n := ss.streams.Add(1)
	switch {
	case n > 2*limit:
		ss.streams.Add(-1)
		ss.log.Warn("session closed: the client keeps refused streams open", "streams", n-1, "max_streams_per_session", limit)
		return false
	case n > limit || ss.revoked.Load():
		st, msg := tunnel.StatusLimit, fmt.Sprintf("this session already has %d streams open (limits.max_streams_per_session)", limit)
		if ss.revoked.Load() {
			st, msg = tunnel.StatusDenied, "access revoked by the gateway"
		}
		s.metrics.streamsTotal.WithLabelValues(s.metrics.labels(ss, ss.sess.Transport(), "", statusResult(st))...).Inc()
		ss.wg.Go(func() {
			c := ss.countIn(in)
			c.Reject(st, msg)
			c.release()
		})
		return true
	}
	ss.wg.Add(1)
	tunnel.Go(func() {
		c := ss.countIn(in)
		relay := ss.serveIncoming(ss.ctx, c, req, reqErr)
		c.release()
		ss.wg.Done()
		// A resumable stream outlives the session: its relay left the
		// session's group for the server's, and runs here rather than in
		// a goroutine of its own, on the stack the open already grew.
		if relay != nil {
			relay()
		}
	})
	return true
}

// countedIncoming is a stream that counts in ss.streams until release. A
// refused one stops counting when the transport frees it
// (tunnel.RejectFreed): a client that opens its next stream on reading the
// refusal must not find this one still counted while the goroutine that
// refused it is still logging (TestStreams_RefusedFloodBounded/ssh saw
// "limit reached" that way under load).
type countedIncoming struct {
	tunnel.Incoming
	once    sync.Once
	streams *streamCount
}

func (ss *session) countIn(in tunnel.Incoming) *countedIncoming {
	return &countedIncoming{Incoming: in, streams: &ss.streams}
}

func (c *countedIncoming) release() { c.once.Do(func() { c.streams.Add(-1) }) }

func (c *countedIncoming) Reject(code tunnel.Status, msg string) {
	tunnel.RejectFreed(c.Incoming, code, msg, c.release)
}

// The session is the control.Gate of its set-up: authorized_keys, limits
// and targets are decided here.

// Begin refuses a source over its failed-authentication budget before its
// Hello is read.
func (ss *session) Begin() *control.Refusal {
	limited, msg := ss.srv.rateLimited(remoteIP(ss.sess.RemoteAddr()))
	if !limited {
		return nil
	}
	ss.limited = true
	return &control.Refusal{Code: control.CodeRateLimited, Error: msg, Log: "session refused: " + msg,
		Hint: "check the key and the gateway address; the gateway counts failed and abandoned authentications per source address (limits.auth_failures_per_minute)"}
}

// Authorize looks a key that a Hello proved up in authorized_keys.
func (ss *session) Authorize(key ssh.PublicKey) *control.Refusal {
	s := ss.srv
	id, err := s.keys.Load().Authorize(key, remoteIP(ss.sess.RemoteAddr()), time.Now())
	if err == nil {
		ss.ident = id
		return nil
	}
	hint := ""
	switch cert, isCert := key.(*ssh.Certificate); {
	case isCert && errors.Is(err, auth.ErrUnknownKey):
		hint = "the certificate's CA " + auth.Fingerprint(cert.SignatureKey) + " is not trusted here: ask the gateway's operator for a certificate from a trusted CA, or to add a cert-authority line for this CA to the gateway's authorized_keys"
	case isCert && errors.Is(err, auth.ErrKeyRestricted) && errors.Is(err, auth.ErrCertInvalid):
		// The certificate lacks permit-port-forwarding: its CA, not the
		// gateway's authorized_keys, can fix that.
		hint = "ask your certificate authority for a certificate with the permit-port-forwarding extension (ssh-keygen -s CA -O permit-port-forwarding, or without -O clear), or pass -i with another key"
	case errors.Is(err, auth.ErrUnknownKey):
		// The hint never names the gateway's files: an unknown client
		// learns nothing of the host (issue 10, finding 7).
		hint = "ask the gateway's operator to add your public key to the gateway's authorized_keys: " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
	}
	return &control.Refusal{Code: authCode(err), Error: s.clientAuthError(err), Hint: hint, Err: err, Key: key}
}

// Admit decides the session a Hello with an authorized key asks for: its
// targets, the per-key session limit, permitopen=; it returns the
// Welcome with the targets' topologies (or the listing).
func (ss *session) Admit(ctx context.Context, h *control.Hello) (*control.Welcome, *control.Refusal) {
	s := ss.srv
	if r := ss.checkHelloTargets(h); r != nil {
		return nil, r
	}
	if !ss.up() {
		return nil, &control.Refusal{Code: control.CodeSessionLimit, Log: "session limit reached: client told",
			Error: fmt.Sprintf("key %s already has %d sessions open on this gateway", ss.ident.Fingerprint, s.config().Limits.MaxSessionsPerKey),
			Hint:  "close other 'cachetun connect' processes using this key, or ask the gateway's operator to raise limits.max_sessions_per_key"}
	}
	ss.countSession(h.Target)
	server := "cachetun " + s.version // only an accepting Welcome names it
	if h.List {
		ss.log.Info("target list requested", "client", h.Client)
		return &control.Welcome{OK: true, Server: server, Allowed: ss.targetList(ctx)}, nil
	}
	cs, r := ss.openTargets(ctx, h)
	if cs == nil {
		return nil, r
	}
	ss.ctrlMu.Lock()
	ss.ctrlState = cs
	ss.ctrlMu.Unlock()
	ss.log.Info("control stream up", keyTarget, strings.Join(cs.names(), ","), "client", h.Client)
	ss.countSession(cs.ts[0].name) // one label per session: its first target
	infos := make([]control.TargetInfo, len(cs.ts))
	for i, t := range cs.ts {
		infos[i] = t.Info()
	}
	w := &control.Welcome{OK: true, Server: server, Target: &infos[0], Targets: infos}
	if _, ok := ss.sess.(tunnel.OpenPayloader); ok {
		w.OpenPayload = true // SSH: a stream's first payload may ride in its channel-open
	}
	if grace := resumeGraceMS(s.config().Limits); h.Resume && grace > 0 {
		ss.ctrlMu.Lock()
		ss.link = ss.newLink(ss.ctrl)
		ss.ctrlMu.Unlock()
		w.ResumeGraceMS = grace
	}
	return w, nil
}

// openTargets waits for the first discovery of the Hello's targets, judges
// permitopen= on their nodes and records them as the session's. No state
// and no refusal: a judgement took them away meanwhile (it revokes the
// session).
func (ss *session) openTargets(ctx context.Context, h *control.Hello) (*ctrlState, *control.Refusal) {
	s := ss.srv
	cs := &ctrlState{hello: h, reloaded: s.reloaded()} // before the targets are read: no reload is missed
	for _, n := range ss.helloTargets(h) {
		cs.ts = append(cs.ts, s.target(n))
	}
	// permitopen= is judged on the discovered nodes, and before the
	// session's targets are recorded: a judgement (revoke.go) that saw
	// them would revoke the session before this refusal is sent.
	waitAllDiscovered(ctx, cs.ts, s.config().Limits.DialTimeout)
	for _, t := range cs.ts {
		if msg := permitsTarget(ss.identity(), t); msg != "" {
			return nil, &control.Refusal{Code: control.CodeTargetDenied, Error: msg, Log: "target denied by permitopen",
				Err:  fmt.Errorf("target %q: %s", t.name, msg),
				Hint: "ask the gateway's operator to extend permitopen= on your key's line, or use another target"}
		}
	}
	names := cs.names()
	ss.ctrlMu.Lock()
	ss.target = strings.Join(names, ",")
	ss.targets = names
	ss.all = h.All
	ss.ctrlMu.Unlock()
	// A judgement since the checks above did not know the targets yet.
	for _, t := range cs.ts {
		if id := ss.identity(); !id.Allows(t.name) || permitsTarget(id, t) != "" {
			return nil, nil
		}
	}
	cs.from = make([]<-chan struct{}, len(cs.ts))
	for i, t := range cs.ts {
		cs.from[i] = t.Changed() // before the Welcome's topologies are read
	}
	return cs, nil
}

// Refused logs and counts a refusal of the set-up.
func (ss *session) Refused(r *control.Refusal) {
	if d, ok := ss.sess.(tunnel.EarlyDropper); ok && !ss.isUp {
		d.DropEarly() // streams behind a refused Hello are never served
	}
	ss.srv.metrics.authFailures.WithLabelValues(string(r.Code)).Inc()
	if ss.isUp {
		ss.setEnd("refused", string(r.Code))
	}
	msg, err := r.Log, r.Err
	if msg == "" {
		msg = "authentication failed"
	}
	if err == nil {
		err = errors.New(r.Error)
	}
	attrs := []any{"code", r.Code, keyErr, err}
	switch {
	case ss.isUp: // ss.log names the identity
	case ss.ident != nil:
		attrs = append(identAttrs(ss.ident), attrs...)
	case r.Key != nil:
		// The refused key, so that a log pipeline can group failed
		// logins by key.
		attrs = append([]any{keyKeyFP, auth.Fingerprint(r.Key)}, attrs...)
	}
	ss.log.Warn(msg, attrs...)
}

func authCode(err error) control.Code {
	switch {
	case errors.Is(err, auth.ErrUnknownKey):
		return control.CodeUnknownKey
	case errors.Is(err, auth.ErrKeyExpired):
		return control.CodeKeyExpired
	case errors.Is(err, auth.ErrSourceNotAllowed):
		return control.CodeSourceDenied
	case errors.Is(err, auth.ErrKeyRestricted):
		return control.CodeKeyRestricted
	case errors.Is(err, auth.ErrCertInvalid):
		return control.CodeCertInvalid
	}
	return control.CodeDenied
}

func (ss *session) allowedTargets() string {
	var out []string
	for _, n := range ss.srv.targets().names {
		if ss.ident != nil && ss.ident.Allows(n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return "(none)"
	}
	return fmt.Sprint(out)
}

// linger gives the client up to two seconds to read a refusal and close
// the session itself: closing a QUIC connection discards data in flight.
func (ss *session) linger() {
	select {
	case <-ss.sess.Done():
	case <-time.After(2 * time.Second):
	}
}

// ctrlState is what the control loop serves: the session's targets and
// the change channels taken before their topologies went out.
type ctrlState struct {
	hello    *control.Hello
	ts       []*target
	from     []<-chan struct{}
	reloaded <-chan struct{}

	wctx    context.Context
	wcancel context.CancelFunc
	wwg     sync.WaitGroup
	changed <-chan *target
	retired <-chan int
	// dropped are the targets the client was told it lost (see
	// dropTargets); nothing more about them is sent.
	dropped map[string]bool
}

func (cs *ctrlState) names() []string {
	out := make([]string, len(cs.ts)) // a new slice: ss.targets holds the old one
	for i, t := range cs.ts {
		out[i] = t.name
	}
	return out
}

// watch starts the watchers of the targets' topologies and retirement.
func (cs *ctrlState) watch(ctx context.Context) {
	cs.wctx, cs.wcancel = context.WithCancel(ctx)
	cs.changed = watchTargets(cs.wctx, &cs.wwg, cs.ts, cs.from)
	cs.retired = watchRetired(cs.wctx, &cs.wwg, cs.ts)
}

func (cs *ctrlState) stopWatch() {
	cs.wcancel()
	cs.wwg.Wait()
}

// control serves the control stream after the Welcome: topology pushes,
// pings and refresh requests, until the stream or the session ends.
func (ss *session) control(ctx context.Context, c *control.Conn, hello *control.Hello) {
	ctrl := c.Stream()
	defer ctrl.Close()
	ss.ctrlMu.Lock()
	cs := ss.ctrlState
	ss.ctrlMu.Unlock()
	cs.dropped = make(map[string]bool)
	cs.watch(ctx)
	defer cs.stopWatch()

	frames := make(chan frame)
	go func() {
		defer close(frames)
		for {
			typ, payload, err := c.Read()
			if err != nil {
				ss.noteEndErr(err)
				return
			}
			if ss.resumeFrame(typ, payload) {
				continue
			}
			select {
			case frames <- frame{typ, bytes.Clone(payload)}: // Read reuses payload's buffer
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() {
		if ss.revoked.Load() {
			// Unblock the reader without resetting the stream, which
			// would discard FrameRevoked in flight.
			_ = ctrl.SetReadDeadline(time.Now())
		} else {
			ctrl.Abort()
		}
		for range frames { // let the reader end
		}
	}()
	for ss.controlStep(ctx, cs, frames) == nil {
	}
}

// errControlDone ends the control loop without a write failing.
var errControlDone = errors.New("control stream done")

// controlStep waits for one event of the control loop and handles it.
func (ss *session) controlStep(ctx context.Context, cs *ctrlState, frames <-chan frame) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-ss.judgedOK:
		return ss.dropTargets(cs.ts, cs.dropped)
	case t := <-cs.changed:
		if cs.dropped[t.name] {
			return nil
		}
		info := t.Info()
		return ss.writeFrame(control.FrameTopology, &info)
	case <-cs.reloaded:
		cs.reloaded = ss.srv.reloaded()
		return ss.addReloaded(ctx, cs)
	case i := <-cs.retired:
		return ss.followRetired(ctx, cs, i)
	case f, ok := <-frames:
		if !ok {
			return errControlDone
		}
		switch f.typ {
		case control.FramePing:
			return ss.writeFrame(control.FramePong, nil)
		case control.FrameRefresh:
			refreshTarget(cs.ts, f.payload).requestRefresh()
		default:
			ss.log.Warn("unexpected control frame", "type", f.typ)
		}
	}
	return nil
}

// resumeFrame hands a FrameAck, FrameFin or FrameReset to the session's
// resume link (true), in the control stream's reader: a churn of
// resumable streams brings a Fin or two for each, and the link's handling
// neither blocks nor writes, so they skip the control loop's hand-off.
func (ss *session) resumeFrame(typ control.FrameType, payload []byte) bool {
	switch typ {
	case control.FrameAck, control.FrameFin, control.FrameReset:
	default:
		return false
	}
	if ss.link == nil {
		ss.log.Warn("resume frame on a session without resumption", "type", typ)
		return true
	}
	if _, err := ss.link.Handle(typ, payload); err != nil {
		ss.log.Warn("bad resume frame", "type", typ, keyErr, err)
	}
	return true
}

// sendTopologies sends the topology of every target not dropped.
func (ss *session) sendTopologies(cs *ctrlState) error {
	for _, t := range cs.ts {
		if cs.dropped[t.name] {
			continue
		}
		info := t.Info()
		if err := ss.writeFrame(control.FrameTopology, &info); err != nil {
			return err
		}
	}
	return nil
}

// addReloaded gives a session that asked for every target those a reload
// added (the client opens their ports); dropTargets drops those it removed.
func (ss *session) addReloaded(ctx context.Context, cs *ctrlState) error {
	s := ss.srv
	if !cs.hello.All {
		return nil
	}
	var added []*target
	have := make(map[string]bool, len(cs.ts))
	for _, t := range cs.ts {
		have[t.name] = true
	}
	for _, n := range ss.helloTargets(cs.hello) {
		if !have[n] {
			if t := s.target(n); t != nil {
				added = append(added, t)
			}
		}
	}
	if len(added) == 0 {
		return nil
	}
	cs.stopWatch()
	waitAllDiscovered(ctx, added, s.config().Limits.DialTimeout)
	cs.ts = append(cs.ts, added...)
	cs.from = make([]<-chan struct{}, len(cs.ts))
	for i, t := range cs.ts {
		cs.from[i] = t.Changed()
	}
	names := cs.names()
	ss.ctrlMu.Lock()
	ss.target = strings.Join(names, ",")
	ss.targets = names
	ss.ctrlMu.Unlock()
	cs.watch(ctx)
	if err := ss.sendTopologies(cs); err != nil {
		return err
	}
	for _, t := range added {
		ss.log.Info("target added by a reload: topology sent", keyTarget, t.name, "nodes", len(t.Info().Nodes))
	}
	return nil
}

// followRetired follows a target that a reload replaced (new settings
// under the same name). One it removed stays in ts, unserved: the
// judgement after every reload (revoke.go) ends the session if none of
// its targets is left.
func (ss *session) followRetired(ctx context.Context, cs *ctrlState, i int) error {
	nt := ss.srv.target(cs.ts[i].name)
	if nt == nil {
		ss.log.Warn("target removed by a reload: its streams are closed", keyTarget, cs.ts[i].name)
		return ss.dropTargets(cs.ts, cs.dropped)
	}
	cs.stopWatch()
	cs.ts[i] = nt
	waitAllDiscovered(ctx, []*target{nt}, ss.srv.config().Limits.DialTimeout)
	for j, t := range cs.ts {
		cs.from[j] = t.Changed()
	}
	cs.watch(ctx)
	// Every topology again: a change while the watchers were down is not
	// lost.
	if err := ss.sendTopologies(cs); err != nil {
		return err
	}
	ss.log.Info("target changed by a reload: new topology sent", keyTarget, nt.name, "nodes", len(nt.Info().Nodes))
	return nil
}

// dropTargets tells the client of every target of ts, not yet in
// dropped, that the session may no longer use: a reload removed it, or the
// last judgement's targets= or permitopen= no longer allow it. Their
// streams are cut elsewhere (retire, cutStreams). The last target still
// available is left to the judgement, which ends the session with
// FrameRevoked.
func (ss *session) dropTargets(ts []*target, dropped map[string]bool) error {
	id := ss.identity()
	reasons := make(map[string]string)
	left := 0
	for _, t := range ts {
		if dropped[t.name] {
			continue
		}
		switch nt := ss.srv.target(t.name); {
		case nt == nil:
			reasons[t.name] = "it was removed from the gateway's configuration"
		case !id.Allows(t.name) || permitsTarget(id, nt) != "":
			reasons[t.name] = fmt.Sprintf("key %s may no longer use it (targets= or permitopen= on its authorized_keys line)", id.Fingerprint)
		default:
			left++
		}
	}
	if left == 0 { // the revocation says it
		return nil
	}
	for _, t := range ts {
		reason, ok := reasons[t.name]
		if !ok {
			continue
		}
		dropped[t.name] = true
		ss.log.Warn("target taken from the session: client told", keyTarget, t.name, "reason", reason)
		if err := ss.writeFrame(control.FrameTopology, &control.TargetInfo{Name: t.name, Type: t.Info().Type,
			Nodes: []control.NodeInfo{}, Removed: true, Reason: reason}); err != nil {
			return err
		}
	}
	return nil
}

type frame struct {
	typ     control.FrameType
	payload []byte
}

func (ss *session) writeFrame(typ control.FrameType, v any) error {
	ss.ctrlMu.Lock()
	c := ss.ctrl
	ss.ctrlMu.Unlock()
	if c == nil {
		return tunnel.ErrSessionClosed
	}
	if v == nil {
		return c.Write(typ, nil, 10*time.Second)
	}
	return c.Write(typ, v, 10*time.Second)
}

// goAway tells the client that the gateway drains.
func (ss *session) goAway() {
	ss.ctrlMu.Lock()
	if ss.gone || ss.ctrl == nil {
		ss.gone = true
		ss.ctrlMu.Unlock()
		return
	}
	ss.gone = true
	ss.ctrlMu.Unlock()
	_ = ss.writeFrame(control.FrameGoAway, nil)
}

// serveIncoming reads the open header of a stream after the first, unless
// read already (reqErr is not errNoRequest), and serves it. A session's
// control stream is its first stream: a later one is refused. It returns
// the relay of a resumable stream, to be run outside the session's group
// (serveResumable), or nil.
func (ss *session) serveIncoming(ctx context.Context, in tunnel.Incoming, req tunnel.OpenRequest, reqErr error) func() {
	if errors.Is(reqErr, errNoRequest) {
		req, reqErr = in.Request(time.Now().Add(ss.srv.config().Limits.HandshakeTimeout))
	}
	if reqErr != nil {
		ss.log.Warn("stream refused: malformed open header", keyErr, reqErr)
		in.Reject(tunnel.StatusBadRequest, "malformed open header")
		return nil
	}
	if req.Kind == tunnel.KindControl {
		ss.log.Warn("second control stream refused")
		in.Reject(tunnel.StatusBadRequest, "this session already has a control stream, or has none: a control stream is a session's first stream")
		return nil
	}
	if req.Kind == tunnel.KindResume {
		ss.serveResume(in, req)
		return nil
	}
	if req.Resumable && ss.link == nil {
		ss.log.Warn("stream refused: resumable without resumption negotiated")
		in.Reject(tunnel.StatusBadRequest, "resumable stream on a session that did not negotiate resumption (Hello resume)")
		return nil
	}
	return ss.serveStream(ctx, in, req)
}

// serveStream authorises one stream, dials its node and relays; a
// resumable stream's relay it returns (serveIncoming). Its own frame
// stays small, as the client's serveLocal does: the relay's write path (a
// Resumable, the transport's stream, quic-go's or yamux's send) runs on
// top of it, and a goroutine whose stack outgrows its start copies it once
// per stream, and an idle stream keeps the larger stack. The checks and
// the dial (openUpstream) and the report of the end (plainEnded) are
// functions of their own, out of the relay's way.
func (ss *session) serveStream(ctx context.Context, in tunnel.Incoming, req tunnel.OpenRequest) func() {
	o := ss.openUpstream(ctx, in, &req)
	if o.st == nil {
		return nil
	}
	defer o.done()
	if req.Resumable {
		return ss.serveResumable(o.st, o.up, o.t, o.node, req, o.log, o.start)
	}
	active := ss.srv.metrics.streams.WithLabelValues(ss.sess.Transport(), o.t.name)
	active.Inc()
	rctx, rcancel := context.WithCancel(o.ctx)
	stopCut := context.AfterFunc(o.t.life, rcancel) // a reload retired the target
	res := tunnel.Relay(rctx, o.up, o.st, nil, tunnel.IdleTimeout(ss.srv.config().Limits.IdleTimeout))
	stopCut()
	rcancel()
	active.Dec()
	ss.plainEnded(&o, res)
	return nil
}

// openedStream is a stream openUpstream accepted, its node dialed; done
// ends its tracking (ss.track).
type openedStream struct {
	st    tunnel.Stream
	up    net.Conn
	t     *target
	node  string
	log   *slog.Logger
	start time.Time
	ctx   context.Context
	done  func()
}

// openUpstream checks a proxy stream against the gateway's state, the
// key's rights and the target, dials its node and accepts it; a refused
// or failed one it answers, and returns a zero openedStream.
//
//go:noinline
func (ss *session) openUpstream(ctx context.Context, in tunnel.Incoming, req *tunnel.OpenRequest) openedStream {
	s := ss.srv
	start := time.Now()
	select {
	case <-s.draining:
		in.Reject(tunnel.StatusShutdown, "the gateway is shutting down: reconnect")
		return openedStream{}
	default:
	}
	ss.opened.Add(1)
	ss.countSession("") // a stock OpenSSH session names no target
	m := s.metrics
	transport := ss.sess.Transport()
	t, node, status, msg := s.resolve(*req, ss.identity().Allows)
	log := ss.log.With(keyTarget, req.Target, keyNode, req.Node)
	// Labels carry configured target names only: what a client asks for
	// is not a label, or a client could make series without bound.
	tname := ""
	if t != nil {
		log = ss.log.With(keyTarget, t.name, keyNode, node)
		tname = t.name
	}
	refuse := func(st tunnel.Status, msg string) {
		in.Reject(st, msg)
		m.streamsTotal.WithLabelValues(m.labels(ss, transport, tname, statusResult(st))...).Inc()
		log.Warn("stream refused", keyResult, statusResult(st), keyReason, msg)
	}
	if status != tunnel.StatusOK {
		refuse(status, msg)
		return openedStream{}
	}
	// Registered before the last check, so that a judgement that narrows
	// targets= either sees this stream or is seen by the check.
	ctx, done := ss.track(ctx, t, node)
	if !ss.identity().Allows(t.name) {
		refuse(tunnel.StatusDenied, fmt.Sprintf("key %s may not use target %q", ss.ident.Fingerprint, t.name))
		done()
		return openedStream{}
	}
	if err := mayOpen(ss.identity(), t, node); err != nil {
		refuse(tunnel.StatusDenied, err.Error())
		done()
		return openedStream{}
	}
	dctx, cancel := context.WithTimeout(ctx, s.config().Limits.DialTimeout)
	dialStart := time.Now()
	up, err := t.dial(dctx, node)
	cancel()
	if err != nil {
		m.dialErrors.WithLabelValues(t.name, dialReason(err)).Inc()
		log.Warn("upstream connection failed", keyErr, err) // our own words, or a sanitised prefix
		refuse(tunnel.StatusUnreachable, upstreamFailure(node, err))
		done()
		return openedStream{}
	}
	m.dialSeconds.WithLabelValues(t.name).Observe(time.Since(dialStart).Seconds())
	st, err := in.Accept()
	if err != nil {
		up.Close()
		done()
		return openedStream{}
	}
	return openedStream{st: st, up: up, t: t, node: node, log: log, start: start, ctx: ctx, done: done}
}

// endStream counts the end of a stream to t in the metrics (its bytes, its
// result) and writes its "stream" line to log; extra attributes go after
// the result.
func (ss *session) endStream(t *target, res tunnel.RelayResult, log *slog.Logger, start time.Time, extra ...any) {
	m := ss.srv.metrics
	bytesUp, bytesDown := res.StreamToConn, res.ConnToStream // the conn is the cache
	m.bytes.WithLabelValues(m.labels(ss, t.name, "up")...).Add(float64(bytesUp))
	m.bytes.WithLabelValues(m.labels(ss, t.name, "down")...).Add(float64(bytesDown))
	result := resultOK
	switch {
	case res.Idle:
		result = resultIdle
	case t.isRetired(): // cut by the retiring or by the revocation that follows
		result = resultTargetRemoved
	case res.Err != nil:
		result = resultReset
	}
	m.streamsTotal.WithLabelValues(m.labels(ss, ss.sess.Transport(), t.name, result)...).Inc()
	var buf [14]any // the line's attributes without a slice grown on the heap
	attrs := append(append(buf[:0], keyResult, result), extra...)
	attrs = append(attrs, "bytes_up", bytesUp, "bytes_down", bytesDown, keyDuration, time.Since(start).Round(time.Microsecond))
	if res.Err != nil && !res.Idle {
		attrs = append(attrs, keyErr, res.Err)
	}
	log.Info("stream", attrs...)
}

// plainEnded counts and logs the end of a stream that is not resumable,
// and lets the transport free it.
//
//go:noinline
func (ss *session) plainEnded(o *openedStream, res tunnel.RelayResult) {
	ss.bytesUp.Add(res.StreamToConn)
	ss.bytesDown.Add(res.ConnToStream)
	ss.endStream(o.t, res, o.log, o.start)
	// The stream counts against max_streams_per_session until the
	// transport has freed it: a client that keeps its side of a finished
	// stream open holds a slot, not memory.
	tunnel.Release(o.st)
}

// register applies the per-key session limit and records the session.
func (s *Server) register(ss *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	fp := ss.ident.Fingerprint
	if s.perKey[fp] >= s.config().Limits.MaxSessionsPerKey {
		ss.log.Warn("session refused: max_sessions_per_key reached", identAttrs(ss.ident)...)
		return false
	}
	s.perKey[fp]++
	s.sessions[ss] = struct{}{}
	return true
}

func (s *Server) unregister(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, ss)
	if s.perKey[ss.ident.Fingerprint]--; s.perKey[ss.ident.Fingerprint] <= 0 {
		delete(s.perKey, ss.ident.Fingerprint)
	}
}
