package server

// The gateway's lifecycle. New builds and never listens. Run opens every
// listener (the transports and the metrics address), starts the discovery
// loops once, serves until its context ends, then drains, and returns only
// when everything it started has stopped. Drain and Close may also be
// called while Run runs; both wait on channels, never by polling:
//
//	New ──► Run(ctx) ──► listen ──► Ready() closed ──► serve
//	                                                    │
//	  ctx ends, or Drain ─────────────────────────────► drain: no new
//	                                                    sessions or streams,
//	                                                    GoAway, wait until the
//	                                                    last stream ends (or
//	                                                    drain_timeout, or Close)
//	  Close ──────────────────────────────────────────► close every session
//	                                                    │
//	                        Run returns ◄── listeners, discovery, metrics stopped

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachetun/cachetun/certs"
	"github.com/cachetun/cachetun/tunnel"
)

// ErrRunning is returned by a second call of Run.
var ErrRunning = errors.New("the server has already been run")

// ListenError is a listener that Run could not open; the error text is
// the listener's own, so an operator sees "address already in use".
type ListenError struct {
	Listener string // "quic", "tls", "ssh" or "metrics"
	Addr     string
	Err      error
}

func (e *ListenError) Error() string {
	if e.Listener == "metrics" {
		return fmt.Sprintf("listen metrics on %q: %v", e.Addr, e.Err)
	}
	return e.Err.Error()
}

func (e *ListenError) Unwrap() error { return e.Err }

// Addrs are the addresses Run listens on; nil where nothing is configured.
type Addrs struct {
	QUIC, TLS, SSH, Metrics net.Addr
}

// lifecycle is the state of Run, Drain and Close.
type lifecycle struct {
	started atomic.Bool   // Run was called
	ready   chan struct{} // closed once Run listens; addrs is set before
	done    chan struct{} // closed when a started Run returns
	addrs   Addrs

	closing   chan struct{} // closed by Close
	closeOnce sync.Once
	drained   chan struct{} // closed when Drain has closed every session
	drainOnce sync.Once
}

func newLifecycle() lifecycle {
	return lifecycle{ready: make(chan struct{}), done: make(chan struct{}),
		closing: make(chan struct{}), drained: make(chan struct{})}
}

// Ready returns a channel closed once Run has opened every listener;
// Addrs then says where. If Run fails to listen it is never closed: Run
// returns the error instead.
func (s *Server) Ready() <-chan struct{} { return s.life.ready }

// Addrs returns the addresses Run listens on, once Ready is closed.
func (s *Server) Addrs() Addrs {
	select {
	case <-s.life.ready:
		return s.life.addrs
	default:
		return Addrs{}
	}
}

// Run listens on every configured transport and on the metrics address,
// keeps discovering targets' topologies, and serves sessions until ctx
// ends; it then drains (see Drain) and returns once every goroutine it
// started has stopped: accept loops, sessions, discovery loops and the
// metrics server. Drain or Close during Run end it too (Close at once).
// A listener that cannot be opened is a *ListenError, returned at once
// with the others closed. Run may be called only once (ErrRunning).
func (s *Server) Run(ctx context.Context) error {
	if !s.life.started.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer close(s.life.done)
	select {
	case <-s.life.closing:
		return nil
	default:
	}
	lns, addrs, err := s.listen()
	if err != nil {
		return err
	}
	var mln net.Listener
	if a := s.config().Metrics; a != "" {
		if mln, err = net.Listen(listenNetwork(a), a); err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			return &ListenError{Listener: "metrics", Addr: a, Err: err}
		}
		addrs.Metrics = mln.Addr()
	}
	// Serving from here on (/readyz counts the listeners), and Ready says so.
	s.mu.Lock()
	for _, ln := range lns {
		s.listeners[ln] = struct{}{}
	}
	s.mu.Unlock()
	s.life.addrs = addrs
	close(s.life.ready)

	// Sessions outlive ctx: it starts the drain, which lets their streams
	// finish. They end by Drain or Close, and sctx ends after them.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	s.startDiscovery(sctx)
	var wg sync.WaitGroup // accept loops and the metrics server
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serve(sctx, ln)
		}()
	}
	var hs *http.Server
	if mln != nil {
		hs = &http.Server{Handler: s.MetricsHandler(), ReadHeaderTimeout: 5 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := hs.Serve(mln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("metrics server stopped", keyErr, err)
			}
		}()
	}

	select {
	case <-ctx.Done():
		s.Drain(context.Background())
	case <-s.life.drained:
	case <-s.life.closing:
	}
	// Drain or Close has ended the sessions (or is ending them); what a
	// Close racing with the listeners' start may have missed ends here.
	s.stopTaking()
	s.closeListeners()
	s.closeAll()
	s.wg.Wait()
	if hs != nil {
		hs.Close()
	}
	wg.Wait()
	s.stopDiscovery()
	return nil
}

// Drain stops accepting sessions and streams (new ones are closed at
// once), tells clients to go away, waits until the last open stream ends
// or limits.drain_timeout passes (or ctx ends, or Close is called), then
// closes every session, waits for their goroutines, and closes the
// listeners, which ends Run. Concurrent and later calls wait for the first.
func (s *Server) Drain(ctx context.Context) {
	s.life.drainOnce.Do(func() {
		s.drain(ctx)
		close(s.life.drained)
	})
}

func (s *Server) drain(ctx context.Context) {
	s.stopTaking()
	s.mu.Lock()
	for ss := range s.sessions {
		ss.goAway()
	}
	s.mu.Unlock()
	t := time.NewTimer(s.config().Limits.DrainTimeout)
	defer t.Stop()
	select {
	case <-s.streams.idle():
	case <-t.C:
		s.drainCut()
	case <-ctx.Done():
		s.drainCut()
	case <-s.life.closing:
		s.drainCut()
	}
	s.resume.endAll()
	s.closeAll()
	s.wg.Wait()
	s.closeListeners()
}

func (s *Server) drainCut() {
	s.log.Warn("drain timeout: closing sessions with open streams", "streams", s.streams.count())
}

// Close stops the server at once, as a crash would, but tidily: no
// GoAway, every session and listener closed; a drain in progress is cut
// short. It returns when Run (if it was called) has returned. Idempotent.
func (s *Server) Close() {
	s.life.closeOnce.Do(func() { close(s.life.closing) })
	s.stopTaking()
	s.resume.endAll()
	s.closeAll()
	s.wg.Wait()
	s.closeListeners()
	if s.life.started.Load() {
		<-s.life.done
	}
}

// stopTaking closes draining: from then on no session is accepted and no
// session goroutine is added to wg (serve adds under mu).
func (s *Server) stopTaking() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drainOne.Do(func() { close(s.draining) })
}

// closeListeners closes every listener, which ends its accept loop.
func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ln := range s.listeners {
		ln.Close()
	}
}

func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ss := range s.sessions {
		ss.sess.Close()
	}
}

// listen opens the listeners of every configured transport; on an error
// it closes those it opened.
func (s *Server) listen() ([]tunnel.Listener, Addrs, error) {
	var (
		lns   []tunnel.Listener
		addrs Addrs
	)
	fail := func(name, addr string, err error) ([]tunnel.Listener, Addrs, error) {
		for _, ln := range lns {
			ln.Close()
		}
		return nil, Addrs{}, &ListenError{Listener: name, Addr: addr, Err: err}
	}
	tlsConf, err := certs.ServerTLSConfig(s.hostKey, s.hostCert)
	if err != nil {
		return nil, Addrs{}, err
	}
	l := s.config().Listen
	for _, tr := range []struct {
		name, addr string
		open       func(string, *tls.Config) (tunnel.Listener, error)
		to         *net.Addr
	}{
		{"quic", l.QUIC, s.listenQUIC, &addrs.QUIC},
		{"tls", l.TLS, s.listenTLS, &addrs.TLS},
		{"ssh", l.SSH, func(a string, _ *tls.Config) (tunnel.Listener, error) { return s.listenSSH(a) }, &addrs.SSH},
	} {
		if tr.addr == "" {
			continue
		}
		ln, err := tr.open(tr.addr, tlsConf)
		if err != nil {
			return fail(tr.name, tr.addr, err)
		}
		lns = append(lns, ln)
		*tr.to = ln.Addr()
	}
	return lns, addrs, nil
}

func (s *Server) listenQUIC(addr string, tlsConf *tls.Config) (tunnel.Listener, error) {
	qc := tunnel.DefaultQUICConfig()
	qc.HandshakeTimeout = s.config().Limits.HandshakeTimeout
	qc.MaxStreams = int64(s.config().Limits.MaxStreamsPerSession)
	qc.StatelessResetKey = s.statelessResetKey()
	qc.Admission = s.transportAdmission("quic")
	qc.Logger = s.log
	qc.OnSendError = s.metrics.quicSendErrorCounter()
	qc.OnWindowRefresh = s.metrics.quicRefreshes.Inc
	return tunnel.ListenQUIC(addr, tlsConf, qc)
}

// serve accepts sessions from ln until ln is closed (Drain, Close, or the
// end of Run); while the server drains, new sessions are closed at once.
func (s *Server) serve(ctx context.Context, ln tunnel.Listener) {
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	defer ln.Close()
	for {
		sess, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accept session", keyErr, err)
			continue
		}
		select {
		case <-s.draining:
			sess.Close()
			continue
		default:
		}
		if !s.admit(sess) {
			continue
		}
		// A QUIC or TLS session holds a slot of its source until its
		// Hello is verified; SSH authenticated in the handshake.
		release := func() {}
		if _, pre := sess.(tunnel.PreAuthenticated); !pre {
			src := sourceOf(remoteIP(sess.RemoteAddr()))
			r, err := s.adm.acquire(src)
			if err != nil {
				s.admissionRefused(sess.Transport(), sess.RemoteAddr(), src, err)
				sess.Close()
				continue
			}
			release = r
		}
		if !s.addSession() {
			release()
			sess.Close()
			continue
		}
		s.live.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.live.Add(-1)
			s.serveSession(ctx, sess, release)
		}()
	}
}

// addSession adds a session goroutine to wg, unless the server has stopped
// taking work: checked under mu, so no Add follows the Wait of Drain or
// Close.
func (s *Server) addSession() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.draining:
		return false
	default:
	}
	s.wg.Add(1)
	return true
}

// streamGauge counts the open streams of every session, and signals when
// the last one ends: Drain waits on idle.
type streamGauge struct {
	mu   sync.Mutex    // guards the following
	n    int64         // may dip below 0 for a moment: idle is n <= 0
	zero chan struct{} // closed while idle; nil means idle too
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (g *streamGauge) add(d int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	was := g.n
	g.n += d
	switch {
	case was <= 0 && g.n > 0:
		g.zero = make(chan struct{})
	case was > 0 && g.n <= 0:
		close(g.zero)
		g.zero = nil
	}
}

// idle returns a channel closed once no stream is open (at once if none is).
func (g *streamGauge) idle() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.n <= 0 {
		return closedChan
	}
	return g.zero
}

func (g *streamGauge) count() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}

// streamCount is a session's count of open streams; every change is made
// to the server's streamGauge too.
type streamCount struct {
	n     atomic.Int64
	total *streamGauge // nil in tests that build a bare session
}

// Add adds d and returns the session's new count.
func (c *streamCount) Add(d int64) int64 {
	n := c.n.Add(d)
	if c.total != nil {
		c.total.add(d)
	}
	return n
}

// Load returns the session's count.
func (c *streamCount) Load() int64 { return c.n.Load() }

// listenNetwork is "tcp4" for an IPv4 address such as 0.0.0.0:9464, so the
// listener binds exactly what the config names: Go's "tcp" would bind
// 0.0.0.0 as [::], IPv6 included. Anything else (a host name, [::], :9464)
// keeps "tcp".
func listenNetwork(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "tcp"
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
		return "tcp4"
	}
	return "tcp"
}
