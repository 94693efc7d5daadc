package control

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/tunnel"
)

// pipeStream is a tunnel.Stream over one end of net.Pipe: the set-up
// needs only bytes and deadlines.
type pipeStream struct{ net.Conn }

func (p pipeStream) CloseWrite() error   { return p.Close() }
func (p pipeStream) Abort()              { p.Close() }
func (p pipeStream) WaitReadable() error { return tunnel.ErrNoWait }
func (p pipeStream) FlushOpen() error    { return nil }

// pipeSession is the client's tunnel.Session of the test: a binding, and
// whether the transport authenticated the client.
type pipeSession struct {
	tunnel.Session
	binding []byte
}

func (s pipeSession) Binding() []byte { return s.binding }

type preAuthSession struct{ pipeSession }

func (preAuthSession) AuthInfo() any { return "ssh" }

// testGate authorizes only the key allowed and records what it was asked.
type testGate struct {
	allowed    ssh.PublicKey
	authorized int
	refused    []Code
	admitted   *Hello
}

func (g *testGate) Begin() *Refusal { return nil }

func (g *testGate) Authorize(key ssh.PublicKey) *Refusal {
	g.authorized++
	if string(key.Marshal()) != string(g.allowed.Marshal()) {
		return &Refusal{Code: CodeUnknownKey, Error: "unknown key", Key: key}
	}
	return nil
}

func (g *testGate) Admit(_ context.Context, h *Hello) (*Welcome, *Refusal) {
	g.admitted = h
	if h.Target != "cache" {
		return nil, &Refusal{Code: CodeUnknownTarget, Error: "no such target"}
	}
	return &Welcome{OK: true, Target: &TargetInfo{Name: h.Target}}, nil
}

func (g *testGate) Refused(r *Refusal) { g.refused = append(g.refused, r.Code) }

func newKey(t *testing.T) Key {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return Key{Name: ssh.FingerprintSHA256(s.PublicKey()), Signer: s}
}

// setUp runs Accept and Authenticate against each other.
func setUp(t *testing.T, check KeyCheck, sess tunnel.Session, g Gate, hello Hello, keys []Key) (*Hello, *Welcome, error, error) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	type result struct {
		h   *Hello
		err error
	}
	done := make(chan result, 1)
	go func() {
		h, err := Accept(context.Background(), NewConn(pipeStream{a}),
			Setup{Session: "s1", Deadline: time.Now().Add(5 * time.Second), Check: check, Gate: g})
		a.Close() // the gateway ends the session
		done <- result{h, err}
	}()
	_ = b.SetDeadline(time.Now().Add(5 * time.Second))
	w, cerr := Authenticate(b, sess, hello, keys, slog.New(slog.NewTextHandler(io.Discard, nil)))
	b.Close()
	r := <-done
	return r.h, w, r.err, cerr
}

// TestAccept_SignatureKeys: on QUIC and TLS (Signature) the client offers
// its keys in turn; the gateway refuses the unknown one with unknown_key,
// the client goes on to the next, whose signature of the binding proves it,
// and the Welcome carries the session id.
func TestAccept_SignatureKeys(t *testing.T) {
	stranger, known := newKey(t), newKey(t)
	binding := []byte("binding of this session")
	g := &testGate{allowed: known.Signer.PublicKey()}
	h, w, serr, cerr := setUp(t, Signature(binding), pipeSession{binding: binding}, g,
		Hello{Client: "test", Target: "cache"}, []Key{stranger, known})
	if serr != nil || cerr != nil {
		t.Fatalf("set-up: gateway %v, client %v", serr, cerr)
	}
	if !w.OK || w.Session != "s1" || w.Target == nil || h.Target != "cache" {
		t.Fatalf("welcome %+v, hello %+v", w, h)
	}
	if g.authorized != 2 || len(g.refused) != 1 || g.refused[0] != CodeUnknownKey {
		t.Fatalf("gate asked to authorize %d keys, refused %v; want 2 and [unknown_key]", g.authorized, g.refused)
	}
}

// TestAccept_BindingOfAnotherSession: a signature over another session's
// binding is refused with bad_signature, final, before authorized_keys is
// consulted.
func TestAccept_BindingOfAnotherSession(t *testing.T) {
	known := newKey(t)
	g := &testGate{allowed: known.Signer.PublicKey()}
	_, _, serr, cerr := setUp(t, Signature([]byte("the gateway's binding, 32 bytes long")), pipeSession{binding: []byte("another session binding, 32 bytes")}, g,
		Hello{Target: "cache"}, []Key{known})
	var sr *SessionRefusedError
	if !errors.Is(serr, ErrRefused) || !errors.As(cerr, &sr) || sr.Welcome.Code != CodeBadSignature {
		t.Fatalf("gateway %v, client %v; want a bad_signature refusal", serr, cerr)
	}
	if g.authorized != 0 {
		t.Fatalf("authorized_keys consulted %d times for an unproved key", g.authorized)
	}
}

// TestAccept_TransportVerified: on SSH the transport proved the key; the
// client sends one Hello without proof, the gateway asks no Authorize, and
// the rest (Admit, its refusals) is the same.
func TestAccept_TransportVerified(t *testing.T) {
	g := &testGate{}
	sess := preAuthSession{}
	_, w, serr, cerr := setUp(t, TransportVerified(), sess, g, Hello{Target: "cache"}, []Key{newKey(t)})
	if serr != nil || cerr != nil || !w.OK {
		t.Fatalf("set-up: gateway %v, client %v, welcome %+v", serr, cerr, w)
	}
	if g.authorized != 0 || g.admitted == nil || g.admitted.PublicKey != nil {
		t.Fatalf("authorized %d, admitted %+v; want no Authorize and a Hello without key", g.authorized, g.admitted)
	}
	g = &testGate{}
	_, _, serr, cerr = setUp(t, TransportVerified(), sess, g, Hello{Target: "nope"}, nil)
	var sr *SessionRefusedError
	if !errors.Is(serr, ErrRefused) || !errors.As(cerr, &sr) || sr.Welcome.Code != CodeUnknownTarget {
		t.Fatalf("gateway %v, client %v; want unknown_target", serr, cerr)
	}
}

// TestAccept_TooManyKeys: after MaxHelloTries (6) refused keys the gateway
// ends the set-up with too_many_tries; the client reports the 6 refused
// and the 1 it did not try.
func TestAccept_TooManyKeys(t *testing.T) {
	keys := make([]Key, MaxHelloTries+1)
	for i := range keys {
		keys[i] = newKey(t)
	}
	binding := []byte("a session binding of 32 bytes...")
	g := &testGate{allowed: newKey(t).Signer.PublicKey()}
	_, _, serr, cerr := setUp(t, Signature(binding), pipeSession{binding: binding}, g, Hello{Target: "cache"}, keys)
	var kr *KeysRefusedError
	if !errors.Is(serr, ErrRefused) || !errors.As(cerr, &kr) || len(kr.Refused) != MaxHelloTries || len(kr.Unusable) != 1 {
		t.Fatalf("gateway %v, client %v", serr, cerr)
	}
	if n := len(g.refused); n != MaxHelloTries+1 || g.refused[n-1] != CodeTooManyTries {
		t.Fatalf("refusals %v; want 6 × unknown_key then too_many_tries", g.refused)
	}
}
