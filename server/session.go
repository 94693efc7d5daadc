package server

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// maxHelloTries bounds the keys one session may try, as OpenSSH's
// MaxAuthTries does.
const maxHelloTries = 6

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

	ctrlMu    sync.Mutex // guards the following
	ctrl      tunnel.Stream
	gone      bool     // GoAway sent
	target    string   // the control stream's targets, once allowed, comma-separated
	targets   []string // the same as a list
	all       bool     // the Hello asked for every allowed target
	endResult string   // why the session ended, for the session end line
	endReason string
	endErr    error // the first transport error that ended it

	countOnce sync.Once
	counted   []string // label values of cachetun_sessions, once counted

	// ctrlClaimed is set by the first control stream: every later one is
	// refused, on every transport.
	ctrlClaimed atomic.Bool

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
	ss := &session{srv: s, sess: ts, id: newSessionID(), started: time.Now(),
		streams: streamCount{total: &s.streams},
		rejudge: make(chan struct{}, 1), judgedOK: make(chan struct{}, 1), live: make(map[*liveStream]struct{})}
	ss.log = s.log.With(keySession, ss.id, keyTransport, ts.Transport(), keyRemote, ts.RemoteAddr().String())
	ip := remoteIP(ts.RemoteAddr())

	var (
		hello *control.Hello
		ctrl  tunnel.Stream
	)
	if pa, ok := ts.(tunnel.PreAuthenticated); ok {
		id, _ := pa.AuthInfo().(*auth.Identity)
		if id == nil {
			ss.log.Error("transport reported no identity")
			return
		}
		ss.ident = id
	} else {
		if limited, msg := s.rateLimited(ip); limited {
			ss.log.Warn("session refused: "+msg, "auth_failures_per_minute", s.config().Limits.AuthFailuresPerMinute)
			s.metrics.authFailures.WithLabelValues(string(control.CodeRateLimited)).Inc()
			ss.refuseRateLimited(ctx, msg)
			return
		}
		var ok bool
		ctrl, hello, ok = ss.authenticate(ctx, ip)
		release()
		if !ok {
			if ss.ident == nil {
				// A refused key, a timeout or an end of the connection
				// before a verified Hello: one failure per session.
				s.authFailed(ip)
			}
			return
		}
	}
	if !s.register(ss) {
		s.metrics.authFailures.WithLabelValues(string(control.CodeSessionLimit)).Inc()
		if ctrl != nil {
			ss.refuse(ctrl, &control.Welcome{Code: control.CodeSessionLimit,
				Error: fmt.Sprintf("key %s already has %d sessions open on this gateway", ss.ident.Fingerprint, s.config().Limits.MaxSessionsPerKey),
				Hint:  "close other 'cachetun connect' processes using this key, or ask the gateway's operator to raise limits.max_sessions_per_key"})
		}
		return
	}
	defer s.unregister(ss)
	ss.log = ss.log.With(identAttrs(ss.ident)...)
	ss.log.Info("session start")
	if hello != nil {
		ss.countSession(hello.Target)
	}
	defer func() {
		ss.uncountSession()
		result, reason := ss.ending(ctx)
		ss.ctrlMu.Lock()
		target := ss.target
		ss.ctrlMu.Unlock()
		ss.log.Info("session end", keyTarget, target, keyResult, result, keyReason, reason,
			keyDuration, time.Since(ss.started).Round(time.Millisecond),
			"streams", ss.opened.Load(), "bytes_up", ss.bytesUp.Load(), "bytes_down", ss.bytesDown.Load())
	}()

	var wg sync.WaitGroup
	defer wg.Wait()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if ctrl != nil {
		ss.ctrlClaimed.Store(true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer ts.Close() // the control stream ending ends the session
			ss.control(sctx, ctrl, hello)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		ss.watch(sctx, cancel)
	}()

	limit := int64(s.config().Limits.MaxStreamsPerSession)
	for {
		in, err := ts.AcceptStream(sctx)
		if err != nil {
			ss.noteEndErr(err)
			return
		}
		// Every stream counts until it is gone, refused ones too (Reject
		// returns once the transport freed the stream). Over the limit a
		// stream is refused, and counts while it is; a client that keeps
		// as many refused streams open as the limit (a cachetun client
		// closes a refused stream at once) loses the session, so no
		// number of opens holds more than 2 × max_streams_per_session
		// streams.
		n := ss.streams.Add(1)
		switch {
		case n > 2*limit:
			ss.streams.Add(-1)
			ss.log.Warn("session closed: the client keeps refused streams open", "streams", n-1, "max_streams_per_session", limit)
			return
		case n > limit || ss.revoked.Load():
			st, msg := tunnel.StatusLimit, fmt.Sprintf("this session already has %d streams open (limits.max_streams_per_session)", limit)
			if ss.revoked.Load() {
				st, msg = tunnel.StatusDenied, "access revoked by the gateway"
			}
			s.metrics.streamsTotal.WithLabelValues(s.metrics.labels(ss, ts.Transport(), "", statusResult(st))...).Inc()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer ss.streams.Add(-1)
				in.Reject(st, msg)
			}()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer ss.streams.Add(-1)
			ss.serveStream(sctx, in)
		}()
	}
}

// authenticate reads Hello frames on the first stream until one proves a
// key that authorized_keys accepts and names a target that key may use.
func (ss *session) authenticate(ctx context.Context, ip net.IP) (tunnel.Stream, *control.Hello, bool) {
	s := ss.srv
	deadline := time.Now().Add(s.config().Limits.AuthTimeout)
	actx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	in, err := ss.sess.AcceptStream(actx)
	if err != nil {
		ss.log.Info("session closed before authentication", keyErr, err)
		s.metrics.authFailures.WithLabelValues("no_hello").Inc()
		return nil, nil, false
	}
	req, err := in.Request(deadline)
	if err != nil {
		ss.log.Warn("bad first stream", keyErr, err)
		in.Reject(tunnel.StatusBadRequest, "malformed open header")
		ss.linger()
		return nil, nil, false
	}
	if req.Kind != tunnel.KindControl {
		ss.log.Warn("first stream is not the control stream: refused before authentication", keyTarget, req.Target, keyNode, req.Node)
		in.Reject(tunnel.StatusDenied, "authenticate on the control stream first")
		ss.linger()
		return nil, nil, false
	}
	ctrl, err := in.Accept()
	if err != nil {
		return nil, nil, false
	}
	ss.ctrl = ctrl
	_ = ctrl.SetDeadline(deadline)
	// fail answers a failed attempt; the client may try another key
	// unless the failure is final.
	// keyAttrs name the refused key (key_fp) when one was parsed, so that
	// a log pipeline can group failed logins by key.
	fail := func(code control.Code, err error, hint string, final bool, keyAttrs ...any) {
		s.metrics.authFailures.WithLabelValues(string(code)).Inc()
		ss.log.Warn("authentication failed", append(keyAttrs, "code", code, keyErr, err)...)
		w := &control.Welcome{Code: code, Error: s.clientAuthError(err), Hint: hint}
		if final {
			ss.refuse(ctrl, w)
		} else {
			ss.welcome(ctrl, w)
		}
	}
	for try := 0; try < maxHelloTries; try++ {
		typ, payload, err := control.ReadFrame(ctrl)
		if err != nil {
			// A client that gives up after a refusal closes the session
			// (QUIC: application error 0, TLS and SSH: EOF); that is
			// no event of its own, the refusal was logged.
			if !tunnel.ClosedByPeer(err) {
				ss.log.Warn("authentication aborted", keyErr, err)
			}
			// After a refused Hello, that refusal was counted: a
			// failed login is one failure, not two.
			if try == 0 {
				s.metrics.authFailures.WithLabelValues("no_hello").Inc()
			}
			ctrl.Abort()
			return nil, nil, false
		}
		if typ != control.FrameHello {
			fail(control.CodeProtocol, fmt.Errorf("expected hello frame, got type %d", typ), "", true)
			return nil, nil, false
		}
		hello, err := decodeHello(payload)
		if err != nil {
			fail(control.CodeProtocol, err, "", true)
			return nil, nil, false
		}
		key, err := ssh.ParsePublicKey(hello.PublicKey)
		if err != nil {
			fail(control.CodeBadKey, fmt.Errorf("parse client public key: %w", err), "", true)
			return nil, nil, false
		}
		sig := &ssh.Signature{Format: hello.SigFormat, Blob: hello.SigBlob, Rest: hello.SigRest}
		if err := auth.VerifyBinding(key, ss.sess.Binding(), sig); err != nil {
			fail(control.CodeBadSignature, fmt.Errorf("key %s did not prove possession for this session: %w", auth.Fingerprint(key), err), "", true, keyKeyFP, auth.Fingerprint(key))
			return nil, nil, false
		}
		id, err := s.keys.Load().Authorize(key, ip, time.Now())
		if err != nil {
			hint := ""
			switch cert, isCert := key.(*ssh.Certificate); {
			case isCert && errors.Is(err, auth.ErrUnknownKey):
				hint = "the certificate's CA " + auth.Fingerprint(cert.SignatureKey) + " is not trusted here: ask the gateway's operator for a certificate from a trusted CA, or to add a cert-authority line for this CA to the gateway's authorized_keys"
			case isCert && errors.Is(err, auth.ErrKeyRestricted) && errors.Is(err, auth.ErrCertInvalid):
				// The certificate lacks permit-port-forwarding: its CA,
				// not the gateway's authorized_keys, can fix that.
				hint = "ask your certificate authority for a certificate with the permit-port-forwarding extension (ssh-keygen -s CA -O permit-port-forwarding, or without -O clear), or pass -i with another key"
			case errors.Is(err, auth.ErrUnknownKey):
				// The hint never names the gateway's files: an unknown
				// client learns nothing of the host (issue 10, finding 7).
				hint = "ask the gateway's operator to add your public key to the gateway's authorized_keys: " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
			}
			fail(authCode(err), err, hint, false, keyKeyFP, auth.Fingerprint(key))
			continue
		}
		ss.ident = id
		if !ss.checkHelloTargets(ctrl, hello) {
			return nil, nil, false
		}
		_ = ctrl.SetDeadline(time.Time{})
		// Only now may the transport serve other streams: before,
		// nothing but this control stream is read (tunnel.Gated).
		if g, ok := ss.sess.(tunnel.Gated); ok {
			g.Authenticated()
		}
		return ctrl, hello, true
	}
	fail(control.CodeTooManyTries, fmt.Errorf("too many keys tried (%d)", maxHelloTries), "use -i to pick the key the gateway knows", true)
	return nil, nil, false
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

// refuseRateLimited tells a client over its failed-authentication budget
// why, and when to retry, on its control stream: a refusing Welcome with
// code control.CodeRateLimited, written without reading its Hello.
func (ss *session) refuseRateLimited(ctx context.Context, msg string) {
	actx, cancel := context.WithTimeout(ctx, ss.srv.config().Limits.AuthTimeout)
	defer cancel()
	in, err := ss.sess.AcceptStream(actx)
	if err != nil {
		return
	}
	if _, err := in.Request(time.Now().Add(ss.srv.config().Limits.AuthTimeout)); err != nil {
		in.Reject(tunnel.StatusBadRequest, "malformed open header")
		return
	}
	ctrl, err := in.Accept()
	if err != nil {
		return
	}
	defer ctrl.Abort()
	ss.refuse(ctrl, &control.Welcome{Code: control.CodeRateLimited, Error: msg,
		Hint: "check the key and the gateway address; the gateway counts failed and abandoned authentications per source address (limits.auth_failures_per_minute)"})
}

// refuse writes a refusing Welcome and gives the client a moment to read
// it before the session closes (closing a QUIC connection discards data in
// flight).
func (ss *session) refuse(ctrl tunnel.Stream, w *control.Welcome) {
	ss.welcome(ctrl, w)
	// Under ctrlMu, as every write is: x/crypto/ssh's channel CloseWrite
	// and Write share unguarded state, and a GoAway may be on its way.
	ss.ctrlMu.Lock()
	ss.gone = true
	_ = ctrl.CloseWrite()
	ss.ctrlMu.Unlock()
	_ = ctrl.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(ctrl, 64<<10))
}

// linger gives the client up to two seconds to read a refusal and close
// the session itself: closing a QUIC connection discards data in flight.
func (ss *session) linger() {
	select {
	case <-ss.sess.Done():
	case <-time.After(2 * time.Second):
	}
}

// welcome writes a Welcome frame on ctrl. Only an accepting Welcome names
// the gateway's version: a client that has not authenticated learns none.
func (ss *session) welcome(ctrl tunnel.Stream, w *control.Welcome) {
	if w.OK {
		w.Server = "cachetun " + ss.srv.version
	}
	w.Session = ss.id
	ss.ctrlMu.Lock()
	defer ss.ctrlMu.Unlock()
	_ = ctrl.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = control.WriteJSON(ctrl, control.FrameWelcome, w)
	_ = ctrl.SetWriteDeadline(time.Time{})
}

// control serves the control stream after authentication: Welcome, then
// topology pushes, pings and refresh requests.
func (ss *session) control(ctx context.Context, ctrl tunnel.Stream, hello *control.Hello) {
	s := ss.srv
	defer ctrl.Close()
	ss.ctrlMu.Lock()
	ss.ctrl = ctrl
	ss.ctrlMu.Unlock()
	// Only on SSH, where the control channel comes after transport auth,
	// are the targets checked here first.
	if !ss.checkHelloTargets(ctrl, hello) {
		return
	}
	if hello.List {
		ss.log.Info("target list requested", "client", hello.Client)
		ss.refuse(ctrl, &control.Welcome{OK: true, Allowed: ss.targetList(ctx)})
		return
	}
	reloaded := s.reloaded() // before the targets are read: no reload is missed
	names := ss.helloTargets(hello)
	ts := make([]*target, len(names))
	for i, n := range names {
		ts[i] = s.target(n)
	}
	// permitopen= is judged on the discovered nodes, and before the
	// session's targets are recorded: a judgement (revoke.go) that saw
	// them would revoke the session before this refusal is sent.
	waitAllDiscovered(ctx, ts, s.config().Limits.DialTimeout)
	for _, t := range ts {
		if msg := permitsTarget(ss.identity(), t); msg != "" {
			ss.log.Warn("target denied by permitopen", append(identAttrs(ss.ident), keyTarget, t.name, "reason", msg)...)
			s.metrics.authFailures.WithLabelValues(string(control.CodeTargetDenied)).Inc()
			ss.refuse(ctrl, &control.Welcome{Code: control.CodeTargetDenied, Error: msg,
				Hint: "ask the gateway's operator to extend permitopen= on your key's line, or use another target"})
			return
		}
	}
	ss.ctrlMu.Lock()
	ss.target = strings.Join(names, ",")
	ss.targets = names
	ss.all = hello.All
	ss.ctrlMu.Unlock()
	// A judgement since the checks above did not know the targets yet.
	for _, t := range ts {
		if id := ss.identity(); !id.Allows(t.name) || permitsTarget(id, t) != "" {
			return
		}
	}
	ss.log.Info("control stream up", keyTarget, ss.target, "client", hello.Client)
	ss.countSession(ts[0].name) // one label per session: its first target
	from := make([]<-chan struct{}, len(ts))
	infos := make([]control.TargetInfo, len(ts))
	for i, t := range ts {
		from[i] = t.Changed()
		infos[i] = t.Info()
	}
	ss.welcome(ctrl, &control.Welcome{OK: true, Target: &infos[0], Targets: infos})
	var (
		wctx    context.Context
		wcancel context.CancelFunc
		wwg     sync.WaitGroup
		changed <-chan *target
		retired <-chan int
	)
	watch := func() {
		wctx, wcancel = context.WithCancel(ctx)
		changed = watchTargets(wctx, &wwg, ts, from)
		retired = watchRetired(wctx, &wwg, ts)
	}
	watch()
	defer func() {
		wcancel()
		wwg.Wait()
	}()
	// dropped are the targets the client was told it lost (see
	// dropTargets); nothing more about them is sent.
	dropped := make(map[string]bool)
	sendTopologies := func() error {
		for _, t := range ts {
			if dropped[t.name] {
				continue
			}
			info := t.Info()
			if err := ss.writeFrame(control.FrameTopology, &info); err != nil {
				return err
			}
		}
		return nil
	}

	frames := make(chan frame)
	go func() {
		defer close(frames)
		for {
			typ, payload, err := control.ReadFrame(ctrl)
			if err != nil {
				ss.noteEndErr(err)
				return
			}
			select {
			case frames <- frame{typ, payload}:
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-ss.judgedOK:
			if err := ss.dropTargets(ts, dropped); err != nil {
				return
			}
		case t := <-changed:
			if dropped[t.name] {
				continue
			}
			info := t.Info()
			if err := ss.writeFrame(control.FrameTopology, &info); err != nil {
				return
			}
		case <-reloaded:
			// A session that asked for every target gets those a reload
			// added (the client opens their ports), and drops those it
			// removed.
			reloaded = s.reloaded()
			if !hello.All {
				continue
			}
			var added []*target
			have := make(map[string]bool, len(ts))
			for _, t := range ts {
				have[t.name] = true
			}
			for _, n := range ss.helloTargets(hello) {
				if !have[n] {
					if t := s.target(n); t != nil {
						added = append(added, t)
					}
				}
			}
			if len(added) == 0 {
				continue
			}
			wcancel()
			wwg.Wait()
			waitAllDiscovered(ctx, added, s.config().Limits.DialTimeout)
			ts = append(ts, added...)
			from = make([]<-chan struct{}, len(ts))
			names = make([]string, len(ts)) // new slices: ss.targets holds the old one
			for i, t := range ts {
				from[i] = t.Changed()
				names[i] = t.name
			}
			ss.ctrlMu.Lock()
			ss.target = strings.Join(names, ",")
			ss.targets = names
			ss.ctrlMu.Unlock()
			watch()
			if err := sendTopologies(); err != nil {
				return
			}
			for _, t := range added {
				ss.log.Info("target added by a reload: topology sent", keyTarget, t.name, "nodes", len(t.Info().Nodes))
			}
		case i := <-retired:
			// A reload replaced a target (new settings under the same
			// name): follow the new one. One it removed stays in ts,
			// unserved: the judgement after every reload (revoke.go)
			// ends the session if none of its targets is left.
			nt := s.target(ts[i].name)
			if nt == nil {
				ss.log.Warn("target removed by a reload: its streams are closed", keyTarget, ts[i].name)
				if err := ss.dropTargets(ts, dropped); err != nil {
					return
				}
				continue
			}
			wcancel()
			wwg.Wait()
			ts[i] = nt
			waitAllDiscovered(ctx, []*target{nt}, s.config().Limits.DialTimeout)
			for j, t := range ts {
				from[j] = t.Changed()
			}
			watch()
			// Every topology again: a change while the watchers were
			// down is not lost.
			if err := sendTopologies(); err != nil {
				return
			}
			ss.log.Info("target changed by a reload: new topology sent", keyTarget, nt.name, "nodes", len(nt.Info().Nodes))
		case f, ok := <-frames:
			if !ok {
				return
			}
			switch f.typ {
			case control.FramePing:
				if err := ss.writeFrame(control.FramePong, nil); err != nil {
					return
				}
			case control.FrameRefresh:
				refreshTarget(ts, f.payload).requestRefresh()
			default:
				ss.log.Warn("unexpected control frame", "type", f.typ)
			}
		}
	}
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
	defer ss.ctrlMu.Unlock()
	if ss.ctrl == nil {
		return tunnel.ErrSessionClosed
	}
	_ = ss.ctrl.SetWriteDeadline(time.Now().Add(10 * time.Second))
	defer ss.ctrl.SetWriteDeadline(time.Time{})
	if v == nil {
		return control.WriteFrame(ss.ctrl, typ, nil)
	}
	return control.WriteJSON(ss.ctrl, typ, v)
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

// serveStream authorises one stream, dials its node and relays.
func (ss *session) serveStream(ctx context.Context, in tunnel.Incoming) {
	s := ss.srv
	start := time.Now()
	req, err := in.Request(time.Now().Add(s.config().Limits.HandshakeTimeout))
	if err != nil {
		ss.log.Warn("stream refused: malformed open header", keyErr, err)
		in.Reject(tunnel.StatusBadRequest, "malformed open header")
		return
	}
	if req.Kind == tunnel.KindControl {
		// One control stream per session: the first claims it, on SSH
		// where several channels may open at once too.
		if !ss.ctrlClaimed.CompareAndSwap(false, true) {
			ss.log.Warn("second control stream refused")
			in.Reject(tunnel.StatusBadRequest, "this session already has a control stream")
			return
		}
		ctrl, err := in.Accept()
		if err != nil {
			return
		}
		_ = ctrl.SetReadDeadline(time.Now().Add(s.config().Limits.AuthTimeout))
		typ, payload, err := control.ReadFrame(ctrl)
		_ = ctrl.SetReadDeadline(time.Time{})
		if err != nil || typ != control.FrameHello {
			ctrl.Abort()
			return
		}
		hello, err := decodeHello(payload)
		if err != nil {
			ctrl.Abort()
			return
		}
		ss.streams.Add(-1) // the control stream is not a proxied stream
		defer ss.streams.Add(1)
		ss.control(ctx, ctrl, hello)
		ss.waitRevoke() // a revocation in progress writes its frame first
		ss.sess.Close()
		return
	}
	select {
	case <-s.draining:
		in.Reject(tunnel.StatusShutdown, "the gateway is shutting down: reconnect")
		return
	default:
	}
	ss.opened.Add(1)
	ss.countSession("") // a stock OpenSSH session names no target
	m := s.metrics
	transport := ss.sess.Transport()
	t, node, status, msg := s.resolve(req, ss.identity().Allows)
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
		return
	}
	// Registered before the last check, so that a judgement that narrows
	// targets= either sees this stream or is seen by the check.
	ctx, done := ss.track(ctx, t, node)
	defer done()
	if !ss.identity().Allows(t.name) {
		refuse(tunnel.StatusDenied, fmt.Sprintf("key %s may not use target %q", ss.ident.Fingerprint, t.name))
		return
	}
	if err := mayOpen(ss.identity(), t, node); err != nil {
		refuse(tunnel.StatusDenied, err.Error())
		return
	}
	dctx, cancel := context.WithTimeout(ctx, s.config().Limits.DialTimeout)
	dialStart := time.Now()
	up, err := t.dial(dctx, node)
	cancel()
	if err != nil {
		m.dialErrors.WithLabelValues(t.name, dialReason(err)).Inc()
		log.Warn("upstream connection failed", keyErr, err) // our own words, or a sanitised prefix
		refuse(tunnel.StatusUnreachable, upstreamFailure(node, err))
		return
	}
	m.dialSeconds.WithLabelValues(t.name).Observe(time.Since(dialStart).Seconds())
	st, err := in.Accept()
	if err != nil {
		up.Close()
		return
	}
	active := m.streams.WithLabelValues(transport, t.name)
	active.Inc()
	rctx, rcancel := context.WithCancel(ctx)
	stopCut := context.AfterFunc(t.life, rcancel) // a reload retired the target
	res := tunnel.Relay(rctx, up, st, nil, tunnel.IdleTimeout(s.config().Limits.IdleTimeout))
	stopCut()
	rcancel()
	active.Dec()
	bytesUp, bytesDown := res.StreamToConn, res.ConnToStream // the conn is the cache
	ss.bytesUp.Add(bytesUp)
	ss.bytesDown.Add(bytesDown)
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
	m.streamsTotal.WithLabelValues(m.labels(ss, transport, t.name, result)...).Inc()
	attrs := []any{keyResult, result, "bytes_up", bytesUp, "bytes_down", bytesDown, keyDuration, time.Since(start).Round(time.Microsecond)}
	if res.Err != nil && !res.Idle {
		attrs = append(attrs, keyErr, res.Err)
	}
	log.Info("stream", attrs...)
	// The stream counts against max_streams_per_session until the
	// transport has freed it: a client that keeps its side of a finished
	// stream open holds a slot, not memory.
	tunnel.Release(st)
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
