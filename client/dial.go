package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/certs"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/tunnel"
)

// connect tries every server in order and returns the first session that
// authenticates, with the gateway's Welcome.
func (c *Client) connect(ctx context.Context) (*conn, *control.Welcome, error) {
	var errs []error
	for _, server := range c.serverOrder() {
		cn, w, err := c.connectOne(ctx, server)
		if err == nil {
			cn.listed = server
			return cn, w, nil
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		errs = append(errs, err)
		// A refused key or host key is final for this server, but another
		// gateway may know us: go on.
	}
	if len(errs) == 1 {
		return nil, nil, errs[0]
	}
	return nil, nil, errors.Join(errs...)
}

// serverOrder is the order connect tries the listed gateways in: as
// listed, except that the one whose session ended last goes last, so that
// a gateway that died or drains is not waited for while another is listed.
func (c *Client) serverOrder() []string {
	avoid := c.avoid.Load()
	if avoid == nil {
		return c.opts.Servers
	}
	order := make([]string, 0, len(c.opts.Servers))
	var last []string
	for _, s := range c.opts.Servers {
		if s == *avoid {
			last = append(last, s)
			continue
		}
		order = append(order, s)
	}
	return append(order, last...)
}

// quicDoubtFallback is how long auto waits for QUIC after a QUIC session
// was declared dead (UDP may have stopped passing) before it tries TLS.
const quicDoubtFallback = 500 * time.Millisecond

// connectOne dials one gateway with the configured transport (auto: QUIC,
// then TLS when QUIC gets no answer) and authenticates.
func (c *Client) connectOne(ctx context.Context, server string) (*conn, *control.Welcome, error) {
	switch c.opts.Transport {
	case TransportAuto:
		wait := c.opts.QUICFallback
		if c.quicDoubt.Load() {
			wait = min(wait, quicDoubtFallback)
		}
		qctx, cancel := context.WithTimeout(ctx, wait)
		cn, w, err := c.dialAuth(qctx, TransportQUIC, server)
		cancel()
		if err == nil {
			c.quicDoubt.Store(false)
		}
		if err == nil || !fallbackWorthy(err) || ctx.Err() != nil {
			return cn, w, err
		}
		c.log.Info("quic got no answer: falling back to tls over tcp", "server", server, "err", err)
		return c.dialAuth(ctx, TransportTLS, server)
	default:
		return c.dialAuth(ctx, c.opts.Transport, server)
	}
}

// fallbackWorthy reports whether a QUIC failure may be a blocked UDP path
// rather than a verdict of the gateway.
func fallbackWorthy(err error) bool {
	switch {
	case errors.Is(err, ErrDNS):
		return false // TLS would resolve the same name
	case errors.Is(err, ErrNoAnswer), errors.Is(err, ErrRefused):
		return true
	}
	var e *control.Error
	if errors.As(err, &e) {
		return false // host key or authentication verdicts are final
	}
	return true
}

func (c *Client) dialAuth(ctx context.Context, transport, server string) (*conn, *control.Welcome, error) {
	dctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
	defer cancel()
	port, open := c.transportDialer(transport)
	if open == nil {
		return nil, nil, fmt.Errorf("unknown transport %q", transport)
	}
	addr := hostPortDefault(server, port)
	var (
		hostMu   sync.Mutex
		hostErr  error
		hostSeen bool
	)
	verify := func(k ssh.PublicKey) error {
		err := c.checkHostKey(addr, k)
		hostMu.Lock()
		hostErr, hostSeen = err, true
		hostMu.Unlock()
		return err
	}
	hostVerdict := func(err error) error {
		hostMu.Lock()
		defer hostMu.Unlock()
		if hostErr != nil {
			return &control.Error{Err: hostErr, Hint: hostKeyHint(hostErr)}
		}
		return err
	}
	// Probed over TCP on the same port: what answers there tells a wrong
	// port (ssh, a cache) from UDP that is blocked. Within auto's fallback
	// window (QUICFallback) the probe never fires.
	start := time.Now()
	sess, err := dialWatched(dctx, transport, addr, !c.reconnecting.Load(), func(ctx context.Context) (tunnel.Session, error) {
		return open(ctx, addr, verify)
	})
	if err != nil {
		hostMu.Lock()
		seen := hostSeen
		hostMu.Unlock()
		return nil, nil, hostVerdict(explainDial(transport, addr, err, seen))
	}
	cn := &conn{sess: sess, server: addr, live: newLiveness(c.opts.DeadAfter, c.opts.ProbeTimeout)}
	handshake := time.Since(start)
	w, err := c.authenticate(dctx, cn)
	if err != nil {
		sess.Close()
		return nil, nil, err
	}
	// Each phase is a whole number of round trips (test/rtt_test.go
	// counts them): QUIC's handshake 1, TLS's 2 (TCP, TLS), SSH's 7;
	// the Hello and Welcome 1 (SSH: 2, with the control channel's open).
	c.log.Debug("session set up", "server", addr, "transport", transport,
		"handshake", handshake.Round(time.Millisecond), "hello_welcome", (time.Since(start) - handshake).Round(time.Millisecond))
	if op, ok := sess.(tunnel.OpenPayloader); ok && w.OpenPayload {
		op.EnableOpenPayload() // SSH: a stream's first bytes ride in its channel-open
	}
	// Run's watcher of the session (noteSession) ends ctx with it.
	cn.ctx, cn.cancel = context.WithCancel(context.Background())
	return cn, w, nil
}

// sessionDialer opens a transport's session to addr; verify checks the
// gateway's host key.
type sessionDialer func(ctx context.Context, addr string, verify func(ssh.PublicKey) error) (tunnel.Session, error)

// transportDialer returns a transport's default port and its dialer (nil:
// no such transport).
func (c *Client) transportDialer(transport string) (string, sessionDialer) {
	switch transport {
	case TransportQUIC:
		return DefaultPort, func(ctx context.Context, addr string, verify func(ssh.PublicKey) error) (tunnel.Session, error) {
			qc := tunnel.DefaultQUICConfig()
			qc.LocalAddr = c.opts.LocalAddr
			qc.Logger = c.log
			return tunnel.DialQUIC(ctx, addr, certs.ClientTLSConfig(verify), qc)
		}
	case TransportTLS:
		return DefaultPort, func(ctx context.Context, addr string, verify func(ssh.PublicKey) error) (tunnel.Session, error) {
			tc := tunnel.DefaultTLSConfig()
			tc.LocalAddr = c.opts.LocalAddr
			return tunnel.DialTLS(ctx, addr, certs.ClientTLSConfig(verify), tc)
		}
	case TransportSSH:
		return DefaultSSHPort, c.dialSSH
	}
	return "", nil
}

func hostKeyHint(err error) string {
	var mm *auth.HostKeyMismatchError
	if errors.As(err, &mm) {
		return "if the gateway's key really changed, remove its old line from " + mm.Path + "; otherwise do not connect"
	}
	if errors.Is(err, auth.ErrUnknownHost) {
		return "compare that fingerprint with the one 'cachetun server init' printed (ask the gateway's operator); if they match, run again with --accept-new-host-key"
	}
	return ""
}

// checkHostKey checks the gateway's host key against known_hosts. An
// unknown host is reported with its fingerprint, to compare with what
// 'cachetun server init' printed; with --accept-new-host-key its key is
// recorded and, as ssh does, a line says so on Notice.
func (c *Client) checkHostKey(addr string, k ssh.PublicKey) error {
	err := c.hosts.Check(addr, nil, k)
	var unknown *auth.UnknownHostError
	if !errors.As(err, &unknown) {
		return err
	}
	if !c.opts.AcceptNewHostKey {
		return fmt.Errorf("%w for %s: it presented %s %s, and %s has no entry for it",
			auth.ErrUnknownHost, addr, keyType(k), auth.Fingerprint(k), c.opts.KnownHosts)
	}
	accept := &auth.HostKeyChecker{Path: c.hosts.Path, AcceptNew: true}
	if err := accept.Check(addr, nil, k); err != nil {
		return err
	}
	hp := addr
	if h, p, err := net.SplitHostPort(addr); err == nil && p != "22" {
		hp = "[" + h + "]:" + p
	}
	fmt.Fprintf(c.opts.Notice, "Permanently added '%s' (%s %s) to %s\n", hp, keyType(k), auth.Fingerprint(k), c.opts.KnownHosts)
	return nil
}

// refusal is one key the gateway said no to.
type refusal = control.KeyRefused

// authenticate opens the control stream and sets the session up on it
// (control.Authenticate): each key in turn proves itself by signing the
// session binding, unless the transport authenticated it already.
func (c *Client) authenticate(ctx context.Context, cn *conn) (*control.Welcome, error) {
	ctrl, err := cn.sess.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindControl, Target: c.opts.Target})
	if err != nil {
		return nil, fmt.Errorf("open control stream: %w", err)
	}
	cn.ctrl = ctrl
	if dl, ok := ctx.Deadline(); ok {
		_ = ctrl.SetDeadline(dl)
		defer ctrl.SetDeadline(time.Time{})
	}
	keys := make([]control.Key, len(c.signers))
	for i, s := range c.signers {
		keys[i] = control.Key{Name: c.keys.names[i], Signer: s}
	}
	var sent func()
	c.mu.Lock()
	if e := c.early; e != nil && servesEarly(cn.sess) {
		sent = func() { e.helloSent(cn) } // streams may follow the Hello (early.go)
	}
	c.mu.Unlock()
	w, err := control.AuthenticateThen(ctrl, cn.sess, c.hello(), keys, c.log, sent)
	var (
		se *tunnel.StatusError
		rv *control.RevokedError
		sr *control.SessionRefusedError
		kr *control.KeysRefusedError
	)
	switch {
	case err == nil:
		return w, nil
	case errors.As(err, &se):
		return nil, &control.Error{Err: fmt.Errorf("%w: %s", ErrAuthFailed, se.Message)}
	case errors.As(err, &rv): // a judgement raced the welcome
		return nil, revokedError(rv.Payload)
	case errors.As(err, &sr):
		return nil, sessionRefusal(sr.Welcome)
	case errors.As(err, &kr) && len(kr.Refused) == 0:
		return nil, &control.Error{Err: fmt.Errorf("%w: no key could sign: %s", ErrNoKey, strings.Join(kr.Unusable, "; ")),
			Hint: "pass -i with an unencrypted ed25519 key, or add the key to ssh-agent"}
	case errors.As(err, &kr):
		return nil, keysRefused(kr.Refused, kr.Unusable)
	}
	return nil, err
}

// Errors of a refusal that is about the session, not the key.
var (
	ErrUnknownTarget = errors.New("unknown target")
	ErrTargetDenied  = errors.New("target not allowed for this key")
)

// sessionRefusal words a refusal that no other key would change.
func sessionRefusal(w *control.Welcome) error {
	switch w.Code {
	case control.CodeUnknownTarget:
		return &control.Error{Err: fmt.Errorf("%w: %s", ErrUnknownTarget, w.Error), Hint: w.Hint}
	case control.CodeTargetDenied:
		return &control.Error{Err: fmt.Errorf("%w: %s", ErrTargetDenied, w.Error), Hint: w.Hint}
	case control.CodeSessionLimit:
		// The key is fine: "gateway refused authentication" would send
		// the user after the wrong problem.
		return &control.Error{Err: fmt.Errorf("%w: %s", ErrSessionLimit, w.Error), Hint: w.Hint}
	case control.CodeRateLimited:
		// "too many failed authentications from 198.51.100.27: retry in 41 s"
		return &control.Error{Err: fmt.Errorf("%w: %s", ErrRateLimited, w.Error), Hint: w.Hint}
	}
	return &control.Error{Err: fmt.Errorf("%w: %s", ErrAuthFailed, w.Error), Hint: w.Hint}
}

// keysRefused says which keys were tried, why each was refused, and who
// can fix it: the user (another key, another network) or the gateway's
// operator (authorized_keys).
func keysRefused(refused []refusal, unusable []string) error {
	var tried []string
	for _, r := range refused {
		tried = append(tried, r.Key+": "+r.Error)
	}
	tried = append(tried, unusable...)
	err := fmt.Errorf("%w: the gateway refused %d key(s): %s", ErrAuthFailed, len(refused), strings.Join(tried, "; "))
	var hints []string
	seen := map[control.Code]bool{}
	for _, r := range refused {
		if seen[r.Code] {
			continue
		}
		seen[r.Code] = true
		if h := refusalHint(r); h != "" {
			hints = append(hints, h)
		}
	}
	return &control.Error{Err: keyVerdict{err}, Hint: strings.Join(hints, "; ")}
}

// keyVerdict marks a refusal that is the gateway's verdict on every key
// offered (unknown, expired, restricted ...), as opposed to a refusal of
// the moment (rate limit, session limit): after a session was up, it ends
// the client instead of a reconnect loop (see reconnect).
type keyVerdict struct{ error }

func (v keyVerdict) Unwrap() error { return v.error }

// finalRefusal reports whether err, from a reconnect, is a verdict that
// retrying cannot change: the key refused, or the target taken away.
func finalRefusal(err error) bool {
	var kv keyVerdict
	return errors.As(err, &kv) || errors.Is(err, ErrTargetDenied) || errors.Is(err, ErrUnknownTarget)
}

func refusalHint(r refusal) string {
	switch r.Code {
	case control.CodeUnknownKey:
		if r.Hint != "" {
			return r.Hint
		}
		return "ask the gateway's operator to add your public key (the .pub line) to its authorized_keys, or pass -i with a key it knows"
	case control.CodeKeyExpired:
		return "an expired key can only be renewed by the gateway's operator (expiry-time in authorized_keys, or a new certificate): ask them, or pass -i with another key"
	case control.CodeSourceDenied:
		return "connect from a network the key is allowed from (from= in authorized_keys), or ask the gateway's operator to allow your address"
	case control.CodeCertInvalid:
		return "get a new certificate from your certificate authority (it may have expired or not name this gateway's principals)"
	case control.CodeKeyRestricted:
		if r.Hint != "" {
			return r.Hint // a certificate without permit-port-forwarding: its CA's to fix
		}
		return "the key's line in the gateway's authorized_keys forbids port forwarding (restrict, no-port-forwarding): ask the gateway's operator, or pass -i with another key"
	}
	return r.Hint
}

// dialSSH is in ssh.go.
