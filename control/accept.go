package control

// The gateway's set-up of a session, the same on every transport: read
// Hellos (bounded), prove the key, answer Welcome or a typed refusal.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
)

// MaxHelloTries bounds the keys one session may try (one Hello each), as
// OpenSSH's MaxAuthTries does.
const MaxHelloTries = 6

// welcomeTimeout bounds the write of a Welcome.
const welcomeTimeout = 5 * time.Second

// Refusal is the gateway's no to a Hello, sent as a Welcome with Code,
// Error and Hint. A refusal whose Code is a KeyRefusal lets the client
// send its next Hello; any other ends the session.
type Refusal struct {
	Code  Code
	Error string // for the client: never the gateway's file names
	Hint  string
	// Err is what the gateway's log says (nil: Error).
	Err error
	// Log is the message of the gateway's log line ("" : "authentication
	// failed").
	Log string
	// Key is the refused key, when one was parsed.
	Key ssh.PublicKey
}

// Gate is the gateway's side of a session set-up: the decisions that need
// authorized_keys, limits and targets. Accept asks it in this order.
type Gate interface {
	// Begin is asked before the first Hello of a client that the
	// transport did not authenticate; a refusal (a source over its
	// failed-authentication budget) is sent without reading a Hello.
	Begin() *Refusal
	// Authorize judges the key that a Hello proved by its signature (not
	// asked when the transport verified the key): nil, or the refusal.
	Authorize(key ssh.PublicKey) *Refusal
	// Admit decides the session that h asks for, once its key is
	// authorized (targets, limits), and returns the accepting Welcome or a
	// refusal. Neither: the gateway ends the session itself (it is
	// revoking it and says so with FrameRevoked).
	Admit(ctx context.Context, h *Hello) (*Welcome, *Refusal)
	// Refused is told of every refusal before it is sent, to log and
	// count it.
	Refused(r *Refusal)
}

// KeyCheck is how a session's Hello proves the client's key.
type KeyCheck struct {
	binding   []byte
	transport bool
}

// Signature is the KeyCheck of QUIC and TLS: the Hello carries the public
// key and its signature of the session binding (auth.VerifyBinding), and
// the Gate authorizes the key.
func Signature(binding []byte) KeyCheck { return KeyCheck{binding: binding} }

// TransportVerified is the KeyCheck of SSH: the transport's handshake
// verified the key's signature and had the gateway authorize it, so the
// Hello carries no proof. Nothing else of the set-up differs.
func TransportVerified() KeyCheck { return KeyCheck{transport: true} }

// check proves and authorizes the key of h.
func (kc KeyCheck) check(h *Hello, g Gate) *Refusal {
	if kc.transport {
		return nil
	}
	key, err := ssh.ParsePublicKey(h.PublicKey)
	if err != nil {
		return &Refusal{Code: CodeBadKey, Error: fmt.Sprintf("parse client public key: %v", err)}
	}
	sig := &ssh.Signature{Format: h.SigFormat, Blob: h.SigBlob, Rest: h.SigRest}
	if err := auth.VerifyBinding(key, kc.binding, sig); err != nil {
		msg := fmt.Sprintf("key %s did not prove possession for this session: %v", auth.Fingerprint(key), err)
		return &Refusal{Code: CodeBadSignature, Error: msg, Key: key}
	}
	return g.Authorize(key)
}

// Setup is what Accept needs besides the control stream.
type Setup struct {
	// Session is the id every Welcome carries, for correlating logs.
	Session string
	// Deadline bounds the Hellos: every one must have arrived and been
	// judged by then.
	Deadline time.Time
	Check    KeyCheck
	Gate     Gate
}

// ErrRefused is wrapped by the error of Accept when it refused the client
// (and sent the refusal).
var ErrRefused = errors.New("session refused")

// AbortedError is the error of Accept when the client ended or stalled
// the set-up instead of sending a Hello.
type AbortedError struct {
	Hellos int // the Hellos read before (each one refused)
	Err    error
}

func (e *AbortedError) Error() string {
	return fmt.Sprintf("read hello after %d: %v", e.Hellos, e.Err)
}

func (e *AbortedError) Unwrap() error { return e.Err }

// Accept sets up a session on its control stream c, on every transport:
// it reads Hellos until one proves a key (s.Check) that the Gate
// authorizes, at most MaxHelloTries, and answers each: a refused key with
// a Welcome that lets the client try its next key, any other refusal with
// a final Welcome after which the gateway closes the session. Once a key
// is authorized the Gate admits the session and Accept sends its Welcome.
// It returns the accepted Hello; for a List Hello the Welcome carries the
// listing and is final, and the caller ends the session.
func Accept(ctx context.Context, c *Conn, s Setup) (*Hello, error) {
	_ = c.st.SetReadDeadline(s.Deadline)
	if !s.Check.transport {
		if r := s.Gate.Begin(); r != nil {
			return nil, refuse(c, s, r)
		}
	}
	h, err := readHellos(c, s)
	if err != nil {
		return nil, err
	}
	_ = c.st.SetReadDeadline(time.Time{})
	w, r := s.Gate.Admit(ctx, h)
	switch {
	case r != nil:
		return nil, refuse(c, s, r)
	case w == nil:
		return nil, fmt.Errorf("set up session: %w", ErrRefused)
	}
	w.Session = s.Session
	if h.List {
		c.finish(w)
		return h, nil
	}
	if err := c.Write(FrameWelcome, w, welcomeTimeout); err != nil {
		return nil, fmt.Errorf("write welcome: %w", err)
	}
	return h, nil
}

// readHellos reads Hellos until one proves an authorized key.
func readHellos(c *Conn, s Setup) (*Hello, error) {
	for try := 0; try < MaxHelloTries; try++ {
		typ, payload, err := c.Read()
		if err != nil {
			c.st.Abort()
			return nil, &AbortedError{Hellos: try, Err: err}
		}
		if typ != FrameHello {
			return nil, refuse(c, s, &Refusal{Code: CodeProtocol, Error: fmt.Sprintf("expected hello frame, got type %d", typ)})
		}
		h, err := DecodeHello(payload)
		if err != nil {
			return nil, refuse(c, s, &Refusal{Code: CodeProtocol, Error: err.Error()})
		}
		r := s.Check.check(h, s.Gate)
		if r == nil {
			return h, nil
		}
		if !r.Code.KeyRefusal() {
			return nil, refuse(c, s, r)
		}
		s.Gate.Refused(r)
		if err := c.Write(FrameWelcome, r.welcome(s.Session), welcomeTimeout); err != nil {
			return nil, fmt.Errorf("write welcome: %w", err)
		}
	}
	return nil, refuse(c, s, &Refusal{Code: CodeTooManyTries,
		Error: fmt.Sprintf("too many keys tried (%d)", MaxHelloTries), Hint: "use -i to pick the key the gateway knows"})
}

// refuse is the one way a set-up ends in a refusal: the Gate logs it, the
// client gets it as the last frame, and has a moment to read it.
func refuse(c *Conn, s Setup, r *Refusal) error {
	s.Gate.Refused(r)
	c.finish(r.welcome(s.Session))
	return fmt.Errorf("%w: %s", ErrRefused, r.Code)
}

func (r *Refusal) welcome(session string) *Welcome {
	return &Welcome{Code: r.Code, Error: r.Error, Hint: r.Hint, Session: session}
}

// DecodeHello decodes the payload of a FrameHello.
func DecodeHello(payload []byte) (*Hello, error) {
	var h Hello
	if err := json.Unmarshal(payload, &h); err != nil {
		return nil, fmt.Errorf("decode hello: %w", err)
	}
	return &h, nil
}
