package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/certs"
	"github.com/cachetun/cachetun/tunnel"
)

// connect tries every server in order and returns the first session that
// authenticates, with the gateway's Welcome.
func (c *Client) connect(ctx context.Context) (*conn, *tunnel.Welcome, error) {
	var errs []error
	for _, server := range c.opts.Servers {
		cn, w, err := c.connectOne(ctx, server)
		if err == nil {
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

// connectOne dials one gateway with the configured transport (auto: QUIC,
// then TLS when QUIC gets no answer) and authenticates.
func (c *Client) connectOne(ctx context.Context, server string) (*conn, *tunnel.Welcome, error) {
	switch c.opts.Transport {
	case TransportAuto:
		qctx, cancel := context.WithTimeout(ctx, c.opts.QUICFallback)
		cn, w, err := c.dialAuth(qctx, TransportQUIC, server)
		cancel()
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
	var e *Error
	if errors.As(err, &e) {
		return false // host key or authentication verdicts are final
	}
	return true
}

func (c *Client) dialAuth(ctx context.Context, transport, server string) (*conn, *tunnel.Welcome, error) {
	dctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
	defer cancel()
	port := DefaultPort
	if transport == TransportSSH {
		port = DefaultSSHPort
	}
	addr := hostPortDefault(server, port)
	var (
		hostMu  sync.Mutex
		hostErr error
	)
	verify := func(k ssh.PublicKey) error {
		err := c.hosts.Check(addr, nil, k)
		hostMu.Lock()
		hostErr = err
		hostMu.Unlock()
		return err
	}
	hostVerdict := func(err error) error {
		hostMu.Lock()
		defer hostMu.Unlock()
		if hostErr != nil {
			return &Error{Err: hostErr, Hint: hostKeyHint(hostErr)}
		}
		return err
	}
	var (
		sess tunnel.Session
		err  error
	)
	switch transport {
	case TransportQUIC:
		sess, err = tunnel.DialQUIC(dctx, addr, certs.ClientTLSConfig(verify), tunnel.DefaultQUICConfig())
	case TransportTLS:
		sess, err = tunnel.DialTLS(dctx, addr, certs.ClientTLSConfig(verify), tunnel.DefaultTLSConfig())
	case TransportSSH:
		sess, err = c.dialSSH(dctx, addr, verify)
	default:
		return nil, nil, fmt.Errorf("unknown transport %q", transport)
	}
	if err != nil {
		return nil, nil, hostVerdict(fmt.Errorf("dial %s %s: %w", transport, addr, err))
	}
	cn := &conn{sess: sess, server: addr}
	w, err := c.authenticate(dctx, cn)
	if err != nil {
		sess.Close()
		return nil, nil, err
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() {
		<-sess.Done()
		cancel2()
	}()
	cn.ctx = ctx2
	return cn, w, nil
}

func hostKeyHint(err error) string {
	var mm *auth.HostKeyMismatchError
	if errors.As(err, &mm) {
		return "if the gateway's key really changed, remove its old line from " + mm.Path + "; otherwise do not connect"
	}
	if errors.Is(err, auth.ErrUnknownHost) {
		return "check the key with the gateway's operator ('cachetun server init' printed it), then run with --accept-new-host-key"
	}
	return ""
}

// authenticate opens the control stream and proves a key by signing the
// session binding, trying each key until the gateway accepts one.
func (c *Client) authenticate(ctx context.Context, cn *conn) (*tunnel.Welcome, error) {
	ctrl, err := cn.sess.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindControl, Target: c.opts.Target})
	if err != nil {
		return nil, fmt.Errorf("open control stream: %w", err)
	}
	cn.ctrl = ctrl
	if dl, ok := ctx.Deadline(); ok {
		_ = ctrl.SetDeadline(dl)
		defer ctrl.SetDeadline(time.Time{})
	}
	hello := tunnel.Hello{Client: "cachetun " + Version, Target: c.opts.Target}
	signers := c.signers
	if cn.sess.Transport() == TransportSSH {
		signers = []ssh.Signer{nil} // the SSH handshake authenticated the key
	}
	var last *tunnel.Welcome
	for _, s := range signers {
		if s != nil {
			sig, err := auth.SignBinding(s, cn.sess.Binding())
			if err != nil {
				c.log.Warn("sign with key", "key", auth.Fingerprint(s.PublicKey()), "err", err)
				continue
			}
			hello.PublicKey = s.PublicKey().Marshal()
			hello.SigFormat, hello.SigBlob, hello.SigRest = sig.Format, sig.Blob, sig.Rest
		}
		if err := tunnel.WriteJSON(ctrl, tunnel.FrameHello, &hello); err != nil {
			return nil, fmt.Errorf("send hello: %w", err)
		}
		typ, payload, err := tunnel.ReadServerFrame(ctrl)
		if err != nil {
			var se *tunnel.StatusError
			if errors.As(err, &se) {
				return nil, &Error{Err: fmt.Errorf("%w: %s", ErrAuthFailed, se.Message)}
			}
			return nil, fmt.Errorf("read welcome: %w", err)
		}
		if typ != tunnel.FrameWelcome {
			return nil, fmt.Errorf("read welcome: unexpected frame type %d", typ)
		}
		var w tunnel.Welcome
		if err := json.Unmarshal(payload, &w); err != nil {
			return nil, fmt.Errorf("decode welcome: %w", err)
		}
		if w.OK && w.Target != nil {
			return &w, nil
		}
		last = &w
		if w.Code != "unknown_key" {
			break // only an unknown key is worth trying the next key for
		}
	}
	if last == nil {
		return nil, &Error{Err: ErrNoKey, Hint: "no usable key: pass -i KEYFILE"}
	}
	return nil, &Error{Err: fmt.Errorf("%w: %s", ErrAuthFailed, last.Error), Hint: last.Hint}
}

// dialSSH is in ssh.go.
