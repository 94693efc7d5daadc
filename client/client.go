package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/tunnel"
)

// Transports.
const (
	TransportAuto = "auto"
	TransportQUIC = "quic"
	TransportTLS  = "tls"
	TransportSSH  = "ssh"
)

// Default gateway ports when a server address has none.
const (
	DefaultPort    = "4433"
	DefaultSSHPort = "2222"
)

// Options are the resolved settings of one connect.
type Options struct {
	// Version is this build's version, sent to the gateway in Hello and
	// in the SSH identification string; empty means "dev".
	Version string
	Profile string
	Servers []string
	// Target (with Profile and LocalPort) is the one target of a connect;
	// Targets, when set, replaces it with several, all on one session.
	Target  string
	Targets []TargetOptions
	// All asks the gateway for every target the key may use.
	All bool
	// List asks only for the targets the key may use (see List).
	List             bool
	Transport        string
	Identity         string // key file; empty: ssh-agent, then DefaultKeyFiles
	LocalPort        *int   // nil: the port of the target's first node
	Bind             string
	KnownHosts       string
	AcceptNewHostKey bool
	// Passphrase asks for the passphrase of a protected key file that
	// ssh-agent does not hold; nil never asks (no terminal).
	Passphrase PassphraseFunc

	// WaitForSession is how long a local connection waits for a session
	// while the client reconnects.
	WaitForSession time.Duration
	// QUICFallback is how long auto waits for QUIC before trying TLS.
	QUICFallback time.Duration
	// LocalAddr is the local IP address to dial the gateway from (as
	// ssh -b); empty lets the system choose. Tools and tests use it.
	LocalAddr string
	// Dial bounds one dial and authentication attempt.
	DialTimeout time.Duration
	// Ping is the control-stream keepalive period; a ping unanswered
	// within min(Ping, 5 s) ends the session, so an idle dead session is
	// noticed within 15 s by default (liveness.go).
	Ping time.Duration
	// DeadAfter is how long a stream may wait for an answer (to its open
	// or to a write) before the client probes the session (profile
	// dead_after, default 2 s); ProbeTimeout is how long the probe may go
	// unanswered before the session is declared dead and replaced
	// (default 1 s).
	DeadAfter    time.Duration
	ProbeTimeout time.Duration
	// NoResume turns stream resumption off: the Hello does not ask for
	// it and streams are plain, as with a client before protocol 2
	// (tests and tools use it).
	NoResume bool

	Logger *slog.Logger
	// Out receives the listener table, one line per node.
	Out io.Writer
	// Notice receives lines for the user that are not errors, e.g. a host
	// key recorded by AcceptNewHostKey (the CLI passes stderr).
	Notice io.Writer
	// OnEvent, when set, is called for every change worth showing (see
	// Event); it must not block.
	OnEvent func(Event)
}

// TargetOptions are one target's settings in a connect of several.
type TargetOptions struct {
	Name    string
	Profile string // shown in the table; default Name
	// LocalPort is the first local port of this target's nodes; nil: the
	// connect's LocalPort, else the port of the target's first node.
	LocalPort *int
}

// Sentinel errors.
var (
	ErrNoSession  = errors.New("no session to the gateway")
	ErrAuthFailed = errors.New("gateway refused authentication")
	ErrNoKey      = errors.New("no SSH key to authenticate with")
	// ErrRevoked: the gateway judged the live session again (its
	// authorized_keys changed, the key or certificate expired) and ended
	// it. The verdict is final: Run returns it instead of reconnecting.
	ErrRevoked = errors.New("access revoked by the gateway")
	// ErrRateLimited: the gateway refuses this source for a while, after
	// too many failed or abandoned authentications from it.
	ErrRateLimited = errors.New("gateway refused this address for now")
	// ErrSessionLimit: the key was accepted, but it already holds as many
	// sessions as limits.max_sessions_per_key allows.
	ErrSessionLimit = errors.New("too many sessions for this key")
)

// Client runs one connect: a supervised session and one local listener
// per node of the target.
type Client struct {
	opts    Options
	log     *slog.Logger
	signers []ssh.Signer // keys.signers
	keys    *keySet
	// reconnecting is set once the first session is up: later dials do
	// not probe a silent server (diagnose.go, probeAfter).
	reconnecting atomic.Bool
	// quicDoubt is set when a QUIC session was declared dead: auto then
	// waits less for QUIC before TLS (UDP may have stopped passing).
	quicDoubt atomic.Bool
	hosts     *auth.HostKeyChecker
	// avoid is the listed gateway of the session that ended last: the
	// next connect tries it after the others (failover).
	avoid atomic.Pointer[string]

	mu        sync.Mutex    // guards the following
	cur       *conn         // current session, nil while reconnecting
	ready     chan struct{} // closed when cur is set
	views     []*targetView // in table order
	byName    map[string]*targetView
	removed   map[string]bool    // targets the gateway took from the session
	usedPorts map[int]bool       // local ports of every target
	server    string             // the last session's gateway address
	transport string             // and transport
	conns     map[*conn]struct{} // sessions Run opened that have not ended

	open atomic.Int64 // local connections being relayed

	early *earlyState // the first node's port opened before the first Welcome (early.go); guarded by mu

	resume resumeState // resumable streams; guarded by mu

	wg sync.WaitGroup // accept loops, local connections, refresh requests, session watchers

	started atomic.Bool     // Run was called
	runCtx  context.Context // Run's context; set before any listener opens
	up      chan struct{}   // closed once the listeners are open
	upOnce  sync.Once
	done    chan struct{} // closed when Run returns
}

// Ready is closed once the first session is up and the local listeners
// are open.
func (c *Client) Ready() <-chan struct{} { return c.up }

// conn is one authenticated session with its control stream.
type conn struct {
	sess tunnel.Session
	// ctx ends with the session (noteSession watches it), so relays of
	// a dead session end at once.
	ctx    context.Context
	cancel context.CancelFunc
	ctrl   tunnel.Stream
	server string
	listed string     // the entry of Options.Servers it was dialled from
	live   *liveness  // dead-path detection (liveness.go)
	ctrlMu sync.Mutex // serialises control writes
	// link carries the acks of resumable streams (nil: the gateway
	// offered no resumption); grace is how long the gateway holds them.
	link  *control.Link
	grace time.Duration
}

type localListener struct {
	ln   net.Listener
	node string
}

// targetView is one target of the session: its topology, its local
// listeners and its rewriting state. It embeds its Client for the shared
// lock, logger, session and goroutine group; the fields below are guarded
// by Client.mu unless said otherwise.
type targetView struct {
	*Client
	name      string
	profile   string
	localPort *int
	listeners map[string]*localListener
	order     []string // node addresses in port order
	nextPort  int
	info      control.TargetInfo

	cluster clusterState // address rewriting (cluster.go), its own locks
}

// New checks the options and loads the keys (from the files, or the
// ssh-agent). It builds only: it does not dial the gateway, listen or
// start a goroutine; Run does.
func New(opts Options) (*Client, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if len(opts.Targets) == 0 && opts.Target != "" {
		opts.Targets = []TargetOptions{{Name: opts.Target, Profile: opts.Profile, LocalPort: opts.LocalPort}}
	}
	if opts.Target == "" && len(opts.Targets) > 0 {
		opts.Target = opts.Targets[0].Name
	}
	c := &Client{
		opts:      opts,
		log:       opts.Logger.With("component", "client"),
		hosts:     &auth.HostKeyChecker{Path: auth.ExpandHome(opts.KnownHosts)},
		ready:     make(chan struct{}),
		up:        make(chan struct{}),
		done:      make(chan struct{}),
		byName:    make(map[string]*targetView),
		removed:   make(map[string]bool),
		usedPorts: make(map[int]bool),
		conns:     make(map[*conn]struct{}),
		resume:    resumeState{ids: make(map[uint64]*localStream)},
	}
	for _, t := range opts.Targets {
		c.addViewLocked(t)
	}
	keys, err := loadKeys(opts.Identity, opts.Passphrase)
	if err != nil {
		return nil, err
	}
	c.keys = keys
	c.signers = keys.signers
	return c, nil
}

// setDefaults fills the options left unset.
func (o *Options) setDefaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Notice == nil {
		o.Notice = io.Discard
	}
	setDuration := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	setDuration(&o.WaitForSession, 10*time.Second)
	setDuration(&o.QUICFallback, 1500*time.Millisecond)
	setDuration(&o.DialTimeout, 10*time.Second)
	setDuration(&o.Ping, 10*time.Second)
	setDuration(&o.DeadAfter, 2*time.Second)
	setDuration(&o.ProbeTimeout, time.Second)
	setString := func(s *string, def string) {
		if *s == "" {
			*s = def
		}
	}
	setString(&o.Transport, TransportAuto)
	setString(&o.Bind, "127.0.0.1")
	setString(&o.Version, "dev")
	if o.KnownHosts == "" {
		o.KnownHosts = DefaultKnownHosts()
	}
}

// validate checks the options; it changes nothing. An error is a usage
// error whose fix is the user's.
func (o *Options) validate() error {
	usage := func(err error, hint string) error {
		return &control.Error{Err: err, Hint: hint, Fix: control.FixUser, Usage: true}
	}
	switch o.Transport {
	case TransportAuto, TransportQUIC, TransportTLS, TransportSSH:
	default:
		return usage(fmt.Errorf("unknown transport %q", o.Transport), "use auto, quic, tls or ssh")
	}
	switch {
	case len(o.Servers) == 0:
		return usage(errors.New("no gateway address"), "pass --server HOST:PORT or set server: in the profile")
	case len(o.Targets) == 0 && o.Target == "" && !o.All && !o.List:
		return usage(errors.New("no target name"), "pass --target NAME or set target: in the profile")
	case len(o.Targets) > control.MaxHelloTargets:
		return usage(fmt.Errorf("%d targets in one connect, at most %d", len(o.Targets), control.MaxHelloTargets), "split them over several processes")
	case o.DeadAfter < 0 || o.ProbeTimeout < 0:
		return usage(fmt.Errorf("dead_after %s or probe timeout %s is negative", o.DeadAfter, o.ProbeTimeout), "use a positive duration such as 2s, or leave it unset")
	case o.LocalPort != nil && (*o.LocalPort < 0 || *o.LocalPort > 65535):
		return usage(fmt.Errorf("local port %d out of range", *o.LocalPort), "use 1-65535, or 0 for ports the system picks")
	}
	return nil
}

// ErrRunning is returned by a second call of Run.
var ErrRunning = errors.New("the client has already been run")

// Run connects, opens the local listeners and serves until ctx ends. The
// first connection must succeed; later drops are retried with backoff while
// the listeners stay open. Run owns everything it starts: the session
// supervisor (reconnects), the control stream, the local listeners, their
// accept loops and the local connections. It returns only when all of
// them have stopped, and every session it opened is closed. Run may be
// called only once (ErrRunning); to stop it, cancel ctx.
func (c *Client) Run(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer close(c.done)
	// Run's own context ends before stop waits: local connections whose
	// streams are held for resumption follow Run's ctx, so a Run that
	// returns for any reason (a revocation, a refused reconnect) cuts
	// them at once instead of waiting out their grace.
	ctx, cancel := context.WithCancel(ctx)
	defer c.stop()
	defer cancel()
	c.runCtx = ctx
	c.listenEarly()
	cn, welcome, err := c.connect(ctx)
	if err != nil {
		return err
	}
	c.linkSession(cn, welcome)
	c.noteSession(cn)
	if err := c.applyWelcome(welcome, true); err != nil {
		return err
	}
	c.earlyDone()
	c.printTable(cn)
	c.upOnce.Do(func() { close(c.up) })
	c.emit(Event{Kind: EventUp, Server: cn.server, Transport: cn.sess.Transport(), Targets: c.Endpoints()})
	for {
		c.setConn(cn)
		c.resumeOn(cn) // the streams the last session left
		lost, final := c.serveControl(ctx, cn)
		c.setConn(nil)
		select {
		case <-cn.sess.Done(): // not after GoAway: that session serves its streams on
			c.detachStreams(cn)
		default:
		}
		if ctx.Err() != nil {
			return nil
		}
		if final != nil {
			c.emit(Event{Kind: EventRevoked, Server: cn.server, Transport: cn.sess.Transport(), Error: final.Error()})
			return final
		}
		if len(c.opts.Servers) > 1 {
			c.avoid.Store(&cn.listed) // fail over: the other gateways first
		}
		c.log.Warn("session to gateway lost: reconnecting; local ports stay open", "server", cn.server, "reason", lost)
		c.emit(Event{Kind: EventReconnecting, Server: cn.server, Transport: cn.sess.Transport(), Error: lost})
		cn, err = c.reconnect(ctx)
		if err != nil {
			c.emit(Event{Kind: EventRevoked, Error: err.Error()})
			return err
		}
		if cn == nil {
			return nil
		}
	}
}

// Done is closed when Run has returned (and so has everything it started).
func (c *Client) Done() <-chan struct{} { return c.done }

// stop ends what Run started: the listeners close (ending their accept
// loops), every session Run opened closes (ending the relays of its local
// connections, also those of a session the gateway sent GoAway on), and
// stop waits for those goroutines.
func (c *Client) stop() {
	c.mu.Lock()
	e := c.early
	c.mu.Unlock()
	if e != nil {
		e.done("") // a start that failed; nothing after a Welcome
	}
	c.closeListeners()
	c.goodbye()
	c.mu.Lock()
	for cn := range c.conns {
		cn.sess.Close()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// List asks the gateway for the targets the key may use (Options.List
// must be set).
func (c *Client) List(ctx context.Context) ([]control.TargetSummary, error) {
	if !c.opts.List {
		return nil, errors.New("list targets: Options.List is not set")
	}
	cn, w, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer cn.sess.Close()
	if w.Allowed == nil && w.Target != nil {
		return nil, &control.Error{Err: errors.New("the gateway does not list targets"), Hint: "upgrade the gateway; until then its refusal of an unknown target names the allowed ones"}
	}
	return w.Allowed, nil
}

// Dial opens one authenticated session to the first gateway that accepts
// the client and returns it with the gateway's Welcome. Run uses the same
// path; Dial is for tools and tests that open streams themselves.
func (c *Client) Dial(ctx context.Context) (tunnel.Session, *control.Welcome, error) {
	cn, w, err := c.connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	return cn.sess, w, nil
}

// reconnect retries with capped, jittered exponential backoff (at most
// fastRetryMax at first) until a session is up or ctx ends (nil, nil). A refusal of the key or target
// (the access was revoked while the session was down, or the gateway's
// FrameRevoked did not arrive) is final: it returns that error, wrapped
// in ErrRevoked.
func (c *Client) reconnect(ctx context.Context) (*conn, error) {
	c.reconnecting.Store(true)
	start := time.Now()
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		cn, welcome, err := c.connect(ctx)
		if err == nil {
			c.linkSession(cn, welcome)
			c.noteSession(cn)
			if err := c.applyWelcome(welcome, false); err != nil {
				c.log.Error("apply topology", "err", err)
			}
			c.log.Info("session to gateway restored", "server", cn.server, "transport", cn.sess.Transport(), "attempt", attempt)
			c.emit(Event{Kind: EventReconnected, Server: cn.server, Transport: cn.sess.Transport(), Targets: c.Endpoints()})
			return cn, nil
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		if finalRefusal(err) {
			hint := "the gateway's operator decides this: ask them to restore your access"
			var ce *control.Error
			if errors.As(err, &ce) && ce.Hint != "" {
				hint = ce.Hint
			}
			return nil, &control.Error{Err: fmt.Errorf("%w: %w", ErrRevoked, err), Hint: hint, Fix: control.FixOperator}
		}
		sleep := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("reconnect failed", "attempt", attempt, "err", err, "retry_in", sleep.Round(time.Millisecond))
		c.emit(Event{Kind: EventError, Error: err.Error()})
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(sleep):
		}
		limit := 10 * time.Second
		if time.Since(start) < fastRetryFor {
			limit = fastRetryMax
		}
		backoff = min(backoff*2, limit)
	}
}

// A reconnect retries at least every fastRetryMax for its first
// fastRetryFor (a gateway restarting, or draining and then restarting,
// is back within that: the local port works again within about a second
// of it listening), then backs off up to 10 s.
const (
	fastRetryFor = 30 * time.Second
	fastRetryMax = time.Second
)

// noteSession records a session Run opened: the table shows its gateway
// and transport, and stop closes it. It is forgotten when it ends.
func (c *Client) noteSession(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.server, c.transport = cn.server, cn.sess.Transport()
	c.conns[cn] = struct{}{}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		<-cn.sess.Done()
		cn.cancel()
		c.detachStreams(cn) // e.g. a session left after GoAway, or declared dead
		c.mu.Lock()
		delete(c.conns, cn)
		c.mu.Unlock()
	}()
}

func (c *Client) setConn(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cn != nil {
		c.cur = cn
		close(c.ready)
		return
	}
	if c.cur != nil {
		c.cur = nil
		c.ready = make(chan struct{})
	}
}

// session returns the current session, waiting up to WaitForSession while
// the client reconnects.
func (c *Client) session(ctx context.Context) (*conn, error) {
	t := time.NewTimer(c.opts.WaitForSession)
	defer t.Stop()
	for {
		c.mu.Lock()
		cn, ready := c.cur, c.ready
		c.mu.Unlock()
		var doubt <-chan struct{}
		if cn != nil {
			select {
			case <-cn.sess.Done():
			default:
				if doubt = cn.live.pending(); doubt == nil {
					return cn, nil
				}
			}
		}
		select {
		case <-doubt: // the probe was answered, or the session is dead
		case <-ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, fmt.Errorf("%w within %s", ErrNoSession, c.opts.WaitForSession)
		}
	}
}

// errGoAway: the gateway drains; open new streams on a new session.
var errGoAway = errors.New("gateway is draining (goaway)")

// serveControl reads control frames until the session ends. It pings the
// gateway every Ping (keepalive), probes at once when a stream stalls
// (liveness.go), and declares the session dead when a ping goes
// unanswered. It returns why the session ended, and a final error
// (ErrRevoked) when the gateway's verdict forbids reconnecting.
func (c *Client) serveControl(ctx context.Context, cn *conn) (string, error) {
	live := cn.live
	frames := make(chan error, 1)
	heard := make(chan struct{}, 1)
	go func() { frames <- c.readControl(cn, heard) }()
	defer live.settle(true) // new streams waiting on a probe look again
	tick := time.NewTicker(c.opts.Ping)
	defer tick.Stop()
	// The scan looks for stalled streams; due fires at the deadline of
	// the probe in flight.
	scan := time.NewTicker(c.opts.DeadAfter / 4)
	defer scan.Stop()
	due := time.NewTimer(time.Hour)
	due.Stop()
	defer due.Stop()
	ping := func(suspect bool, wait time.Duration, reason string) {
		p, fresh := live.sent(suspect, wait, reason)
		due.Reset(time.Until(p.deadline))
		if !fresh {
			return // the ping in flight answers this one too
		}
		cn.ctrlMu.Lock()
		_ = cn.ctrl.SetWriteDeadline(time.Now().Add(wait))
		err := control.WriteFrame(cn.ctrl, control.FramePing, nil)
		cn.ctrlMu.Unlock()
		if err != nil {
			c.declareDead(cn, "ping not sent within "+wait.String()+": "+err.Error())
		}
	}
	for {
		select {
		case <-ctx.Done():
			c.goodbye() // the gateway must hold none of our streams
			cn.sess.Close()
			<-frames
			return "stopped", nil
		case err := <-frames:
			// On GoAway the old session stays up for the streams it
			// carries; the gateway closes it when they are done.
			if ctx.Err() == nil && !errors.Is(err, errGoAway) {
				cn.sess.Close()
			}
			return sessionEnd(live, err, err.Error())
		case <-cn.sess.Done():
			cn.ctrl.Abort()
			return sessionEnd(live, <-frames, "session closed")
		case <-heard:
			live.settle(false)
		case wish := <-live.kick:
			ping(wish.suspect, c.opts.ProbeTimeout, wish.reason)
		case <-tick.C:
			ping(false, min(c.opts.Ping, keepaliveWait), "keepalive")
		case <-scan.C:
			if why := live.scan(); why != "" {
				ping(true, c.opts.ProbeTimeout, why)
			}
		case <-due.C:
			live.settle(false) // a stream's bytes answer a probe too
			p, recheck := live.overdue()
			if p != nil {
				c.declareDead(cn, fmt.Sprintf("no answer within %s to a ping sent because %s", p.deadline.Sub(p.sent).Round(time.Millisecond), p.reason))
			} else if !recheck.IsZero() {
				due.Reset(time.Until(recheck))
			}
		}
	}
}

// readControl reads the gateway's frames until one ends the session (or
// the stream fails) and returns why; every frame is a sign of life
// (heard).
func (c *Client) readControl(cn *conn, heard chan<- struct{}) error {
	fr := control.NewFrameReader(cn.ctrl, control.MaxServerFrameSize) // handleFrame keeps no payload
	for {
		typ, payload, err := fr.Read()
		if err != nil {
			return err
		}
		cn.live.noteHeard()
		select {
		case heard <- struct{}{}:
		default:
		}
		if err := c.handleFrame(cn, typ, payload); err != nil {
			return err
		}
	}
}

// handleFrame acts on one frame from the gateway; an error ends the
// session (GoAway, Revoked, a frame that does not parse).
func (c *Client) handleFrame(cn *conn, typ control.FrameType, payload []byte) error {
	switch typ {
	case control.FrameAck, control.FrameFin, control.FrameReset:
		if cn.link == nil {
			return nil
		}
		if _, err := cn.link.Handle(typ, payload); err != nil {
			c.log.Warn("bad resume frame from the gateway", "type", typ, "err", err)
		}
	case control.FrameTopology:
		var info control.TargetInfo
		if err := json.Unmarshal(payload, &info); err != nil {
			return fmt.Errorf("bad topology frame: %w", err)
		}
		if info.Removed {
			c.removeTarget(info.Name, info.Reason)
			return nil
		}
		if err := c.applyTopology(info, false); err != nil {
			c.log.Error("apply topology", "err", err)
		}
	case control.FrameGoAway:
		return errGoAway
	case control.FrameRevoked:
		return revokedError(payload)
	}
	return nil // FramePong and frames this client does not know
}

// sessionEnd says why a session ended: the gateway's revocation (final),
// the dead-path verdict, or what: the reader's error or the session's end.
func sessionEnd(live *liveness, err error, what string) (string, error) {
	if errors.Is(err, ErrRevoked) {
		return err.Error(), err
	}
	if dead, why := live.deadReason(); dead {
		return errDeadPath.Error() + ": " + why, nil
	}
	return what, nil
}

// revokedError turns a FrameRevoked payload into the final error. The
// gateway's text is printed as it came (it is the gateway's own sentence
// about the key, never upstream bytes), made one line of printable text.
func revokedError(payload []byte) error {
	var r control.Revoked
	if err := json.Unmarshal(payload, &r); err != nil || r.Error == "" {
		r.Error = "no reason given"
	}
	hint := r.Hint
	if hint == "" {
		hint = "the gateway's operator decides this: ask them to restore your access"
	}
	return &control.Error{Err: fmt.Errorf("%w: %s", ErrRevoked, cleanBanner(r.Error)), Hint: cleanBanner(hint), Fix: control.FixOperator}
}

// applyTopology opens listeners for nodes not seen before; ports stay
// stable for nodes already known. first makes listen errors fatal.
func (c *Client) applyTopology(info control.TargetInfo, first bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed[info.Name] { // taken away for the rest of this connect
		return nil
	}
	v := c.byName[info.Name]
	if v == nil && len(c.views) == 1 && info.Name == "" {
		v = c.views[0]
	}
	if v == nil {
		if !c.opts.All {
			c.log.Warn("the gateway pushed the topology of a target this client did not ask for", "target", info.Name)
			return nil
		}
		v = c.addViewLocked(TargetOptions{Name: info.Name})
	}
	return v.applyLocked(info, first)
}

// removeTarget drops a target the gateway took from the session (a
// reload removed it, or narrowed the key's targets=): its local ports
// close, the table no longer lists it, and the user is told why. The
// session and its other targets go on. The reason is the gateway's own
// sentence, made one line of printable text.
func (c *Client) removeTarget(name, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.byName[name]
	if v == nil || c.removed[name] {
		return
	}
	c.removed[name] = true
	delete(c.byName, name)
	for i, w := range c.views {
		if w == v {
			c.views = append(c.views[:i:i], c.views[i+1:]...)
			break
		}
	}
	for _, l := range v.listeners {
		l.ln.Close()
	}
	if reason = cleanBanner(reason); reason == "" {
		reason = "no reason given"
	}
	c.log.Warn(fmt.Sprintf("target %q is no longer available: %s", name, reason), "target", name, "ports_closed", len(v.listeners))
	c.emitLocked(Event{Kind: EventTargetRemoved, Target: name, Reason: reason, Targets: c.endpointsLocked()})
}

// addViewLocked adds a target to the table. c.mu is held (or c is new).
func (c *Client) addViewLocked(t TargetOptions) *targetView {
	if t.Profile == "" {
		t.Profile = t.Name
	}
	v := &targetView{Client: c, name: t.Name, profile: t.Profile, localPort: t.LocalPort, listeners: make(map[string]*localListener)}
	c.views = append(c.views, v)
	c.byName[t.Name] = v
	return v
}

// applyLocked opens this target's listeners for nodes not seen before.
func (v *targetView) applyLocked(info control.TargetInfo, first bool) error {
	c := v.Client
	v.info = info
	if v.nextPort == 0 && len(info.Nodes) > 0 {
		switch {
		case v.localPort != nil:
			v.nextPort = *v.localPort
		case c.opts.LocalPort != nil:
			v.nextPort = *c.opts.LocalPort
		default:
			_, p, _ := net.SplitHostPort(info.Nodes[0].Addr)
			v.nextPort, _ = strconv.Atoi(p)
		}
		if v.nextPort == 0 {
			v.nextPort = -1 // ephemeral ports
		}
	}
	var added []string
	for _, n := range info.Nodes {
		if _, ok := v.listeners[n.Addr]; ok {
			continue
		}
		port := 0
		if v.nextPort > 0 {
			// Targets of one connect share the port space: a target
			// whose block would overlap another's moves past it.
			for c.usedPorts[v.nextPort] {
				v.nextPort++
			}
			port = v.nextPort
			v.nextPort++
		}
		addr := net.JoinHostPort(c.opts.Bind, strconv.Itoa(port))
		ln, adopted := c.early.adoptLocked(v, port) // opened before the Welcome
		var err error
		if !adopted {
			ln, err = listenLocal(c.opts.Bind, port)
		}
		if err != nil {
			err = &control.Error{Err: fmt.Errorf("listen on %s for node %s: %w", addr, n.Addr, err), Hint: listenHint(c.opts.Bind, err), Fix: control.FixUser}
			if first {
				for _, w := range c.views {
					for _, l := range w.listeners {
						l.ln.Close()
					}
				}
				return err
			}
			c.log.Error("open local port for new node", "err", err)
			continue
		}
		if p := ln.Addr().(*net.TCPAddr).Port; p > 0 {
			c.usedPorts[p] = true
		}
		l := &localListener{ln: ln, node: n.Addr}
		v.listeners[n.Addr] = l
		v.order = append(v.order, n.Addr)
		added = append(added, n.Addr)
		if adopted {
			continue // its accept loop runs already (early.go)
		}
		c.wg.Add(1)
		go c.acceptLoop(v, l)
	}
	if !first && len(added) > 0 {
		for _, a := range added {
			c.log.Info("new node: local port opened", "target", v.name, "node", a, "local", v.listeners[a].ln.Addr().String())
		}
	}
	old := v.cluster.table.Load()
	v.publishTopologyLocked()
	if !first && (old == nil || old.version != info.Version || len(added) > 0) {
		c.emitLocked(Event{Kind: EventTopology, Target: v.name, Targets: c.endpointsLocked()})
	}
	return nil
}

// applyWelcome applies the topology of every target in a Welcome.
func (c *Client) applyWelcome(w *control.Welcome, first bool) error {
	infos := w.Targets
	if len(infos) == 0 && w.Target != nil {
		infos = []control.TargetInfo{*w.Target}
		if len(c.opts.Targets) > 1 || c.opts.All {
			c.log.Warn("this gateway serves one target per session: only the first is connected; upgrade the gateway for several", "target", w.Target.Name)
		}
	}
	if len(infos) == 0 {
		return &control.Error{Err: errors.New("the gateway's welcome carries no target"), Hint: "upgrade the gateway or the client so that both speak the same protocol"}
	}
	for _, info := range infos {
		if err := c.applyTopology(info, first); err != nil {
			return err
		}
	}
	return nil
}

// LocalAddrs returns the local listener address of every node, in port
// order (tests and the demo use it).
func (c *Client) LocalAddrs() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]string)
	for _, v := range c.views {
		for a, l := range v.listeners {
			m[a] = l.ln.Addr().String()
		}
	}
	return m
}

func (c *Client) printTable(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	WriteTable(c.opts.Out, cn.sess.Transport(), cn.server, c.endpointsLocked())
	if !isLoopback(c.opts.Bind) {
		c.log.Warn("local ports are bound to a non-loopback address: anyone who reaches " + c.opts.Bind + " reaches the cache unencrypted")
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *Client) closeListeners() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range c.views {
		for _, l := range v.listeners {
			l.ln.Close()
		}
	}
}

func hostPortDefault(addr, port string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	return net.JoinHostPort(strings.Trim(addr, "[]"), port)
}
