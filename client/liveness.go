package client

// Dead-path detection. A session can die without a word: a black hole
// (nothing passes, no error), UDP dropped by a new network while TCP
// passes, a gateway killed so that its QUIC socket is gone. The transports'
// own keepalives notice that late (QUIC's idle timeout, yamux's keepalive)
// or, for the streams in flight, not at all. So the client watches every
// proxied stream:
//
//   - a stream that wrote (or sent its open header, or is still opening)
//     and has heard nothing back for Options.DeadAfter makes the session
//     suspect: a probe (control Ping) goes out at once;
//   - every stream opened sends a probe too, unless one is in flight
//     (cheap: one small control frame each way; it catches a gateway that
//     died silently within ProbeTimeout of the first new connection,
//     rather than DeadAfter + ProbeTimeout);
//   - every Options.Ping the control loop pings anyway (keepalive), so an
//     idle dead session is noticed within Ping + keepaliveWait.
//
// A probe is answered by any byte heard on the session after it was sent:
// the Pong, another control frame, or data on any stream. A pingProbe
// unanswered within ProbeTimeout (keepaliveWait for a keepalive) ends the
// session through declareDead, the one place that decides it; Run then
// replaces the session (the next listed gateway first, QUIC then TLS as
// auto does). While a suspect probe is out, new local connections wait for
// its verdict instead of opening streams on a session that may be dead.

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachetun/cachetun/tunnel"
)

// keepaliveWait bounds the answer to a keepalive ping (at most Ping):
// with the default Ping of 10 s an idle dead session is noticed within
// 15 s.
const keepaliveWait = 5 * time.Second

// liveness is one session's dead-path state.
type liveness struct {
	deadAfter, probeWait time.Duration

	// heard counts what arrived on the session (control frames, stream
	// reads with data) while a probe is in flight (probing): only a
	// change since the probe was sent matters, and an add on a counter
	// that every stream's reads share, on every read, cost more than the
	// rest of the watch (BENCHMARKS.md, "What stream resumption costs per
	// request"); a load of a flag that changes once per probe does not.
	heard   atomic.Uint64
	probing atomic.Bool

	kick chan probeWish // cap 1: a probe is wanted now

	mu      sync.Mutex
	probe   *pingProbe // the probe in flight, nil if none
	streams map[*watchedStream]struct{}
	dead    bool
	reason  string // why the session was declared dead
}

// pingProbe is one ping in flight.
type pingProbe struct {
	sent     time.Time
	heardAt  uint64        // liveness.heard when it was sent
	deadline time.Time     // no byte heard by then: the session is dead
	suspect  bool          // sent for a stalled stream, not as a keepalive
	extended bool          // its deadline was moved once (overdue)
	reason   string        // why it was sent
	done     chan struct{} // closed when answered, or the session ended
}

func newLiveness(deadAfter, probeWait time.Duration) *liveness {
	return &liveness{deadAfter: deadAfter, probeWait: probeWait, kick: make(chan probeWish, 1), streams: make(map[*watchedStream]struct{})}
}

// noteHeard records that something arrived on the session.
func (l *liveness) noteHeard() {
	if l.probing.Load() {
		l.heard.Add(1)
	}
}

// probeWish is a request for a probe: why, and whether it makes the
// session suspect (new streams wait for the verdict).
type probeWish struct {
	reason  string
	suspect bool
}

// want asks the control loop for a probe now (it never blocks).
func (l *liveness) want(reason string, suspect bool) {
	select {
	case l.kick <- probeWish{reason, suspect}:
	default:
	}
}

// pending returns the done channel of a probe that new streams should wait
// for: one sent for a stalled stream, or any probe unanswered for a
// quarter of ProbeTimeout. Nil if the session is not in doubt.
func (l *liveness) pending() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.probe
	if p == nil || (!p.suspect && time.Since(p.sent) < l.probeWait/4) {
		return nil
	}
	return p.done
}

// deadReason reports whether declareDead ended the session, and why.
func (l *liveness) deadReason() (bool, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dead, l.reason
}

// sent records a probe about to be written and returns it, fresh when no
// other was in flight (else the one in flight, its deadline tightened to
// now + wait: its answer settles both).
func (l *liveness) sent(suspect bool, wait time.Duration, reason string) (*pingProbe, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if p := l.probe; p != nil {
		if suspect && !p.suspect {
			p.suspect = true
		}
		if d := now.Add(wait); d.Before(p.deadline) {
			p.deadline, p.reason = d, reason
		}
		return p, false
	}
	l.probing.Store(true) // before heardAt: a read that misses the flag came before the probe
	l.probe = &pingProbe{sent: now, heardAt: l.heard.Load(), deadline: now.Add(wait), suspect: suspect, reason: reason, done: make(chan struct{})}
	return l.probe, true
}

// settle closes the probe in flight once anything arrived after it was
// sent, or unconditionally (end of session); it reports whether one was
// settled.
func (l *liveness) settle(force bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.probe
	if p == nil || (!force && l.heard.Load() == p.heardAt) {
		return false
	}
	close(p.done)
	l.probe = nil
	l.probing.Store(false)
	return true
}

// scan returns why a probe is due for a stream that stalled (empty: none).
// Each stall is probed once.
func (l *liveness) scan() string {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	why := ""
	for w := range l.streams {
		m := w.mark.Load()
		if m == 0 || m == w.probed || now.Sub(time.Unix(0, m)) < l.deadAfter {
			continue
		}
		w.probed = m
		why = "a stream made no progress for " + l.deadAfter.String()
	}
	return why
}

// overdue returns the probe in flight if its deadline has passed with
// nothing heard since it was sent. A deadline seen late (by more than a
// quarter of ProbeTimeout: this process did not run, on a loaded machine
// or a laptop waking up, and the answer may be unread) is moved once, to
// ProbeTimeout from now: then recheck is when to look again.
func (l *liveness) overdue() (dead *pingProbe, recheck time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.probe
	now := time.Now()
	if p == nil || now.Before(p.deadline) || l.heard.Load() != p.heardAt {
		return nil, time.Time{}
	}
	if !p.extended && now.Sub(p.deadline) > l.probeWait/4 {
		p.extended = true
		p.deadline = now.Add(l.probeWait)
		return nil, p.deadline
	}
	return p, time.Time{}
}

func (l *liveness) add(w *watchedStream) {
	l.mu.Lock()
	l.streams[w] = struct{}{}
	l.mu.Unlock()
}

func (l *liveness) remove(w *watchedStream) {
	l.mu.Lock()
	delete(l.streams, w)
	l.mu.Unlock()
}

// errDeadPath is why declareDead ended a session.
var errDeadPath = errors.New("dead path: the gateway stopped answering")

// declareDead is the one place that decides a session is dead: it marks
// it, says why, and closes it. Closing ends every stream of the session:
// their relays see the stream fail (stream resumption detaches its
// streams here instead), and Run replaces the session. Idempotent.
func (c *Client) declareDead(cn *conn, reason string) {
	l := cn.live
	l.mu.Lock()
	if l.dead {
		l.mu.Unlock()
		return
	}
	l.dead, l.reason = true, reason
	l.mu.Unlock()
	c.log.Warn("session declared dead: replacing it", "server", cn.server, "transport", cn.sess.Transport(), "reason", reason)
	if cn.sess.Transport() == TransportQUIC {
		c.quicDoubt.Store(true)
	}
	cn.sess.Close()
	l.settle(true)
}

// watchedStream is a proxied stream whose progress the session's liveness
// watches: mark is the time (unix ns) of the oldest write or open not
// followed by anything heard on the stream, 0 when none.
type watchedStream struct {
	tunnel.Stream
	live   *liveness
	mark   atomic.Int64
	probed int64 // the mark last probed; the scanner's own (under live.mu)
}

// watch registers a stream about to be opened on cn: it is marked as
// waiting from now until open (set Stream then) returns.
func (cn *conn) watch() *watchedStream {
	w := &watchedStream{live: cn.live}
	w.mark.Store(time.Now().UnixNano())
	cn.live.add(w)
	return w
}

func (w *watchedStream) unwatch() { w.live.remove(w) }

func (w *watchedStream) waiting() {
	if w.mark.Load() == 0 {
		w.mark.CompareAndSwap(0, time.Now().UnixNano())
	}
}

func (w *watchedStream) heard() {
	if w.mark.Load() != 0 {
		w.mark.Store(0)
	}
	w.live.noteHeard()
}

func (w *watchedStream) Write(p []byte) (int, error) {
	w.waiting()
	return w.Stream.Write(p)
}

func (w *watchedStream) Read(p []byte) (int, error) {
	n, err := w.Stream.Read(p)
	if n > 0 {
		w.heard()
	}
	return n, err
}

func (w *watchedStream) FlushOpen() error {
	w.waiting()
	return w.Stream.FlushOpen()
}
