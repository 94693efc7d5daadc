package server

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
)

// Revocation. A session is judged again, with the same
// auth.AuthorizedKeys.Authorize as at connect time, whenever its access may
// have changed:
//
//   - authorized_keys was reloaded (ReloadKeys signals every session);
//   - the identity's Expires passes (expiry-time, a certificate's
//     ValidBefore): a timer per session fires at that instant;
//   - a QUIC client's address changed (connection migration), for from=
//     and source-address: quic-go v0.65 has no migration callback, but
//     Conn.RemoteAddr follows the validated path, so it is polled every
//     addrCheckPeriod while the key's verdict depends on the address;
//   - once, right after the session registered, for a reload that
//     happened while it authenticated.
//
// A verdict against the key ends the session: new streams are refused,
// every proxied stream is cut, the client gets a FrameRevoked with the
// reason (cachetun clients print it and exit 1), and the session closes
// once the client has read it, at most revokeLinger later. Stock OpenSSH
// clients, which have no control channel, see their connection closed. A
// narrowed targets= cuts only the streams of the targets taken away, and
// the session when its control stream's target is one of them.

// addrCheckPeriod is how often a QUIC session's remote address is
// compared with the last one judged.
const addrCheckPeriod = 500 * time.Millisecond

// revokeLinger bounds how long a revoked session waits for its client to
// read FrameRevoked and close; closing a QUIC connection at once would
// discard the frame in flight.
const revokeLinger = time.Second

// verdict is why a session may no longer go on.
type verdict struct {
	code control.Code // as in Welcome codes
	msg  string       // for the client: no file names, nothing but the key's own facts
	err  error        // for the log
}

// liveStream is a proxied stream being served, cut by cancel.
type liveStream struct {
	t      *target
	node   string
	cancel context.CancelFunc
}

// allowed reports whether id still allows the stream: its target, and its
// node under permitopen=.
func (ls *liveStream) allowed(id *auth.Identity) bool {
	return id.Allows(ls.t.name) && mayOpen(id, ls.t, ls.node) == nil
}

// identity returns what the session may do now: the identity of the last
// judgement, or the one it authenticated with.
func (ss *session) identity() *auth.Identity {
	if id := ss.judged.Load(); id != nil {
		return id
	}
	return ss.ident
}

// track registers a proxied stream to node of t; the returned ctx ends
// when a judgement takes it away (or the session is revoked), and done
// unregisters it.
func (ss *session) track(ctx context.Context, t *target, node string) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	ls := &liveStream{t: t, node: node, cancel: cancel}
	ss.liveMu.Lock()
	ss.live[ls] = struct{}{}
	ss.liveMu.Unlock()
	return ctx, func() {
		ss.liveMu.Lock()
		delete(ss.live, ls)
		ss.liveMu.Unlock()
		cancel()
	}
}

// cutStreams cuts every proxied stream that id no longer allows (every
// stream when id is nil) and returns how many it cut.
func (ss *session) cutStreams(id *auth.Identity) int {
	ss.liveMu.Lock()
	defer ss.liveMu.Unlock()
	n := 0
	for ls := range ss.live {
		if id == nil || !ls.allowed(id) {
			ls.cancel()
			delete(ss.live, ls)
			n++
		}
	}
	return n
}

// watch judges the session whenever its access may have changed (see the
// top of this file) until ctx ends or the session is revoked; cancel ends
// the session's work.
func (ss *session) watch(ctx context.Context, cancel context.CancelFunc) {
	// The address is polled only on QUIC, and only while the key's
	// verdict depends on it, so that idle sessions cost no wake-ups.
	addrPoll := time.NewTicker(addrCheckPeriod)
	addrPoll.Stop()
	defer addrPoll.Stop()
	addr := ss.sess.RemoteAddr().String()
	expiry := time.NewTimer(time.Hour)
	defer expiry.Stop()
	for judge := true; ; {
		if judge {
			v, addrBound := ss.judge(time.Now())
			if v != nil {
				ss.revoke(v, cancel)
				return
			}
			expiry.Stop()
			if exp := ss.identity().Expires; !exp.IsZero() {
				expiry.Reset(time.Until(exp))
			}
			addrPoll.Stop()
			if addrBound && ss.sess.Transport() == "quic" {
				addrPoll.Reset(addrCheckPeriod)
			}
			judge = false
		}
		select {
		case <-ctx.Done():
			return
		case <-ss.sess.Done():
			return
		case <-ss.rejudge:
			judge = true
		case <-expiry.C:
			judge = true
		case <-addrPoll.C:
			if a := ss.sess.RemoteAddr().String(); a != addr {
				ss.log.Info("client address changed (connection migration): judging the session again", "from", addr, keyRemote, a)
				addr, judge = a, true
			}
		}
	}
}

// presented returns the key or certificate the client authenticated with.
func presented(id *auth.Identity) ssh.PublicKey {
	if id.Cert != nil {
		return id.Cert
	}
	return id.Key
}

// judge authorizes the session's key again against the current
// authorized_keys, its current address and now. It records the new
// identity and cuts the streams of targets taken away; it returns a
// verdict when the session must end, and whether the verdict depends on
// the client's address (from=, source-address).
func (ss *session) judge(now time.Time) (*verdict, bool) {
	s := ss.srv
	old := ss.identity()
	ip := remoteIP(ss.sess.RemoteAddr())
	ak := s.keys.Load()
	id, err := ak.Authorize(presented(ss.ident), ip, now)
	if err != nil {
		return revokedVerdict(old, ip.String(), err), false
	}
	// Authorize fails every address restriction for a nil address: if the
	// verdict is the same without one, no address could change it.
	nid, err := ak.Authorize(presented(ss.ident), nil, now)
	addrBound := err != nil || !reflect.DeepEqual(id, nid)
	ss.judged.Store(id)
	ss.ctrlMu.Lock()
	names := ss.targets
	ss.ctrlMu.Unlock()
	if v := ss.targetsVerdict(id, names); v != nil {
		return v, false
	}
	if n := ss.cutStreams(id); n > 0 {
		ss.log.Warn("streams cut: their targets are no longer allowed for this key", "streams", n, "targets", fmt.Sprint(id.Targets))
	}
	select { // the control loop tells the client of targets taken away
	case ss.judgedOK <- struct{}{}:
	default: // one is pending already
	}
	return nil, addrBound
}

// revokedVerdict words a failed re-authorization for the client: the
// key's own facts, never the server's file names.
func revokedVerdict(id *auth.Identity, ip string, err error) *verdict {
	what := "key " + id.Fingerprint
	if id.Cert != nil {
		what = fmt.Sprintf("certificate %q (serial %d) for key %s", id.Cert.KeyId, id.Cert.Serial, id.Fingerprint)
	}
	v := &verdict{code: authCode(err), err: err}
	switch {
	case errors.Is(err, auth.ErrKeyExpired):
		v.code = control.CodeKeyExpired
		when := "now"
		if !id.Expires.IsZero() {
			when = "at " + id.Expires.UTC().Format(time.RFC3339)
		}
		v.msg = what + " expired " + when
	case errors.Is(err, auth.ErrUnknownKey) && id.Cert != nil:
		v.msg = fmt.Sprintf("%s: its certificate authority %s is no longer trusted by the gateway", what, auth.Fingerprint(id.Cert.SignatureKey))
	case errors.Is(err, auth.ErrUnknownKey):
		v.msg = what + " is no longer authorized on the gateway"
	case errors.Is(err, auth.ErrSourceNotAllowed):
		v.msg = fmt.Sprintf("%s may not be used from %s any more", what, ip)
	case errors.Is(err, auth.ErrKeyRestricted):
		v.msg = what + " may no longer forward ports (restrict or no-port-forwarding on its authorized_keys line)"
	case errors.Is(err, auth.ErrCertInvalid):
		v.msg = what + " is no longer valid"
	default:
		v.msg = what + " is no longer allowed on the gateway"
	}
	return v
}

// revokeHint is the client's way out of a revocation.
const revokeHint = "the gateway's operator decides this: ask them to restore your access; reconnecting will not help"

// revoke ends the session for v: see the top of this file. cancel ends
// the session's work. Only the first call acts.
func (ss *session) revoke(v *verdict, cancel context.CancelFunc) {
	ss.revokeMu.Lock()
	defer ss.revokeMu.Unlock()
	if !ss.revoked.CompareAndSwap(false, true) {
		return
	}
	s := ss.srv
	n := ss.cutStreams(nil)
	if v.code != control.CodeTargetRemoved { // an operator's change, not a failure of the key
		s.metrics.authFailures.WithLabelValues("revoked_" + string(v.code)).Inc()
	}
	ss.setEnd("revoked", string(v.code))
	ss.log.Warn("access revoked: ending the session", "code", v.code, "streams_cut", n, keyErr, v.err)
	ss.ctrlMu.Lock()
	ctrl := ss.ctrl
	ss.ctrlMu.Unlock()
	var err error
	if ctrl != nil {
		err = ctrl.Final(control.FrameRevoked, &control.Revoked{Code: v.code, Error: v.msg, Hint: revokeHint}, revokeLinger)
	}
	if ctrl != nil && err == nil {
		select { // the client closes the session once it has read the frame
		case <-ss.sess.Done():
		case <-time.After(revokeLinger):
		}
	}
	cancel()
	ss.sess.Close()
}

// waitRevoke waits for a revocation in progress to have written its
// frame, so that closing the session does not cut it. revoke holds
// revokeMu from start to end, so taking and at once releasing it is a
// barrier: it returns at once when no revocation runs, and otherwise when
// the running one has finished. There is nothing to guard, only to wait on.
func (ss *session) waitRevoke() {
	ss.revokeMu.Lock()
	//lint:ignore SA2001 an intended barrier (see above): waits for revoke to release the lock
	ss.revokeMu.Unlock()
}

// rejudgeAll asks every registered session to judge itself again.
func (s *Server) rejudgeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ss := range s.sessions {
		select {
		case ss.rejudge <- struct{}{}:
		default: // one is pending already
		}
	}
}
