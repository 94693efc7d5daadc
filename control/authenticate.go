package control

// The client's side of a session set-up (Accept is the gateway's).

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/tunnel"
)

// Key is one key a client may offer, and where it came from (a file, the
// agent) with its fingerprint.
type Key struct {
	Name   string
	Signer ssh.Signer
}

// KeyRefused is one key the gateway said no to.
type KeyRefused struct {
	Key   string // Key.Name
	Code  Code
	Error string
	Hint  string
}

// KeysRefusedError is the error of Authenticate when the gateway refused
// every key offered (Refused, possibly empty) and the others could not
// sign or were not tried (Unusable, one sentence each).
type KeysRefusedError struct {
	Refused  []KeyRefused
	Unusable []string
}

func (e *KeysRefusedError) Error() string {
	return fmt.Sprintf("the gateway refused %d key(s), %d could not be offered", len(e.Refused), len(e.Unusable))
}

// SessionRefusedError is the error of Authenticate when the gateway
// refused the session rather than a key (Welcome.Code is not a
// KeyRefusal): no other key would change it.
type SessionRefusedError struct{ Welcome *Welcome }

func (e *SessionRefusedError) Error() string {
	return fmt.Sprintf("session refused (%s): %s", e.Welcome.Code, e.Welcome.Error)
}

// RevokedError is the error of Authenticate when a FrameRevoked came
// instead of the Welcome (a judgement raced it); Payload is its payload.
type RevokedError struct{ Payload []byte }

func (e *RevokedError) Error() string { return "access revoked during the set-up" }

// Authenticate sets up a session on its control stream ctrl, the client's
// side of Accept, on every transport: it sends a Hello per key, each
// signing the session binding, until the gateway accepts one (at most
// MaxHelloTries). A key refused for itself moves on to the next, as OpenSSH
// does; any other refusal ends at once. On a session whose transport
// authenticated the client (tunnel.PreAuthenticated: SSH) it sends one
// Hello without proof. The Welcome is accepted when OK and carrying a
// target, or, for a List Hello, the listing.
func Authenticate(ctrl io.ReadWriter, sess tunnel.Session, hello Hello, keys []Key, log *slog.Logger) (*Welcome, error) {
	return AuthenticateThen(ctrl, sess, hello, keys, log, nil)
}

// AuthenticateThen is Authenticate that calls lastSent (if not nil) once
// it has written the last Hello it will offer (its last key, or the last
// the gateway allows), before it reads the answer: a client may open
// streams right behind that Hello (the gateway reads none of them before
// it verified the Hello). It is not called behind a Hello that a refusal
// could make the client follow with another, as the gateway may read that
// one only after such a stream's data.
func AuthenticateThen(ctrl io.ReadWriter, sess tunnel.Session, hello Hello, keys []Key, log *slog.Logger, lastSent func()) (*Welcome, error) {
	if _, ok := sess.(tunnel.PreAuthenticated); ok {
		keys = []Key{{}} // the transport proved the key
	}
	var (
		refused  []KeyRefused
		unusable []string
	)
	for i, k := range keys {
		if len(refused) == MaxHelloTries {
			unusable = append(unusable, fmt.Sprintf("%d more keys not tried: the gateway allows %d per connection", len(keys)-i, MaxHelloTries))
			break
		}
		if k.Signer != nil {
			sig, err := auth.SignBinding(k.Signer, sess.Binding())
			if err != nil {
				log.Warn("sign with key", "key", k.Name, "err", err)
				unusable = append(unusable, k.Name+": "+err.Error())
				continue
			}
			hello.PublicKey = k.Signer.PublicKey().Marshal()
			hello.SigFormat, hello.SigBlob, hello.SigRest = sig.Format, sig.Blob, sig.Rest
		}
		var sent func()
		if i == len(keys)-1 || len(refused) == MaxHelloTries-1 {
			sent = lastSent
		}
		w, err := offer(ctrl, &hello, sent)
		if err != nil {
			var se *tunnel.StatusError
			if len(refused) > 0 && !errors.As(err, &se) && !errors.As(err, new(*RevokedError)) && !errors.Is(err, errUnexpected) {
				break // the gateway closed the session after a refusal
			}
			return nil, err
		}
		if w.OK && (w.Target != nil || hello.List) {
			return w, nil
		}
		if !w.Code.KeyRefusal() {
			return nil, &SessionRefusedError{Welcome: w}
		}
		log.Debug("key refused: trying the next one", "key", k.Name, "code", w.Code, "err", w.Error)
		refused = append(refused, KeyRefused{Key: k.Name, Code: w.Code, Error: w.Error, Hint: w.Hint})
	}
	return nil, &KeysRefusedError{Refused: refused, Unusable: unusable}
}

// errUnexpected marks an answer to a Hello that is no Welcome.
var errUnexpected = errors.New("unexpected answer")

// offer sends one Hello, calls sent (if not nil), and reads the answer.
func offer(ctrl io.ReadWriter, hello *Hello, sent func()) (*Welcome, error) {
	if err := WriteJSON(ctrl, FrameHello, hello); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	if sent != nil {
		sent()
	}
	typ, payload, err := ReadServerFrame(ctrl)
	if err != nil {
		return nil, fmt.Errorf("read welcome: %w", err)
	}
	switch typ {
	case FrameRevoked:
		return nil, &RevokedError{Payload: payload}
	case FrameWelcome:
	default:
		return nil, fmt.Errorf("read welcome: %w: frame type %d", errUnexpected, typ)
	}
	var w Welcome
	if err := json.Unmarshal(payload, &w); err != nil {
		return nil, fmt.Errorf("decode welcome: %w: %w", errUnexpected, err)
	}
	return &w, nil
}
