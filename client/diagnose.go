package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/tunnel"
)

// Errors of a dial that never reached the gateway's authentication. Each
// comes wrapped in an *control.Error whose hint names the fix.
var (
	ErrDNS         = errors.New("cannot resolve the gateway's host name")
	ErrRefused     = errors.New("the gateway port refused the connection")
	ErrNoAnswer    = errors.New("no answer from the gateway")
	ErrWrongServer = errors.New("not a cachetun gateway port")
	// ErrWrongTransportPort: a gateway port, but another transport's; it
	// is also ErrWrongServer (errors.Is).
	ErrWrongTransportPort = &wrongTransportPort{}
)

type wrongTransportPort struct{}

func (*wrongTransportPort) Error() string        { return "not the port of this transport" }
func (*wrongTransportPort) Is(target error) bool { return target == ErrWrongServer }

// probeAfter is how long a TLS or SSH handshake may stay silent before the
// client asks the server what it is (probe). A real gateway answers a
// handshake within a few round trips; one that is merely slow counts the
// probe as a failed handshake of this address (limits.auth_failures_per_minute,
// 30 by default), so only the first connect of a run probes, never the
// reconnect loop.
const probeAfter = 2 * time.Second

// serverKind is what a probe or a failed handshake says the server is.
type serverKind int

const (
	kindUnknown   serverKind = iota
	kindSSH                  // sent an SSH greeting
	kindRedis                // answered PING like Redis or Valkey
	kindMemcached            // answered like memcached
	kindOther                // answered something that is neither TLS nor SSH
)

// classify looks at the first bytes a server sent.
func classify(b []byte) serverKind {
	switch {
	case len(b) == 0:
		return kindUnknown
	case bytes.HasPrefix(b, []byte("SSH-")):
		return kindSSH
	case bytes.HasPrefix(b, []byte("+PONG")), bytes.HasPrefix(b, []byte("-ERR")), bytes.HasPrefix(b, []byte("-NOAUTH")),
		bytes.HasPrefix(b, []byte("-WRONGPASS")), bytes.HasPrefix(b, []byte("-DENIED")), bytes.HasPrefix(b, []byte("-MOVED")):
		return kindRedis
	case bytes.HasPrefix(b, []byte("ERROR")), bytes.HasPrefix(b, []byte("CLIENT_ERROR")):
		return kindMemcached
	case b[0] == 0x15 || b[0] == 0x16: // TLS alert or handshake record
		return kindUnknown
	}
	return kindOther
}

// probe connects to addr, sends a Redis PING (an SSH server greets first;
// a gateway's TLS port drops it unanswered) and classifies the first bytes
// that come back within a second.
func probe(ctx context.Context, addr string) serverKind {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return kindUnknown
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	// A cancelled probe (the dial it watches is done) ends at once.
	defer context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })()
	_, _ = c.Write([]byte("PING\r\n"))
	buf := make([]byte, 64)
	n, _ := io.ReadAtLeast(c, buf, 4)
	return classify(buf[:n])
}

// dialWatched runs dial; if it is still waiting after probeAfter, a probe
// asks the server what it is, and a server that is plainly not the
// gateway (Redis, memcached, SSH on the TLS port) ends the wait at once
// instead of at the dial timeout.
func dialWatched(ctx context.Context, transport, addr string, watch bool, dial func(context.Context) (tunnel.Session, error)) (tunnel.Session, error) {
	if !watch {
		return dial(ctx)
	}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		s   tunnel.Session
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := dial(dctx)
		done <- result{s, err}
	}()
	timer := time.NewTimer(probeAfter)
	defer timer.Stop()
	probed := make(chan serverKind, 1)
	probing := false // a probe runs and has not reported
	defer func() {   // the probe ends with dctx: wait for it
		if probing {
			cancel()
			<-probed
		}
	}()
	var verdict error
	for {
		select {
		case r := <-done:
			if r.err != nil && verdict != nil {
				return nil, verdict
			}
			return r.s, r.err
		case <-timer.C:
			probing = true
			go func() { probed <- probe(dctx, addr) }()
		case k := <-probed:
			probing = false
			if e := wrongServer(transport, addr, k); e != nil && verdict == nil {
				verdict = e
				cancel()
			}
		}
	}
}

// wrongServer words what kind says about addr, or nil if it says nothing.
func wrongServer(transport, addr string, k serverKind) error {
	_, port, _ := net.SplitHostPort(addr)
	switch k {
	case kindSSH:
		if transport == TransportSSH {
			return nil
		}
		return &control.Error{Err: fmt.Errorf("%s %s: %w: it sent an SSH greeting, so this looks like the gateway's ssh port", transport, addr, ErrWrongTransportPort),
			Hint: "use --transport ssh with this port, or the gateway's quic/tls port (default " + DefaultPort + ") without it"}
	case kindRedis:
		return &control.Error{Err: fmt.Errorf("%s %s: %w: it answers like a Redis or Valkey server", transport, addr, ErrWrongServer),
			Hint: "--server names the gateway (quic/tls port default " + DefaultPort + ", ssh " + DefaultSSHPort + "), not the cache: the gateway knows the cache nodes"}
	case kindMemcached:
		return &control.Error{Err: fmt.Errorf("%s %s: %w: it answers like a memcached server", transport, addr, ErrWrongServer),
			Hint: "--server names the gateway (quic/tls port default " + DefaultPort + ", ssh " + DefaultSSHPort + "), not the cache: the gateway knows the cache nodes"}
	case kindOther:
		return &control.Error{Err: fmt.Errorf("%s %s: %w: it answers, but speaks neither TLS nor SSH", transport, addr, ErrWrongServer),
			Hint: "check the port: the gateway's quic/tls port is " + DefaultPort + " and its ssh port " + DefaultSSHPort + " unless its listen: says otherwise (port " + port + " is something else)"}
	}
	return nil
}

// explainDial turns a failed dial into an *control.Error that says what went
// wrong in the user's terms: DNS, nothing listening, no answer, or a port
// that is not the gateway's (or the other transport's). sawHostKey tells
// whether the handshake got as far as the server's host key.
func explainDial(transport, addr string, err error, sawHostKey bool) error {
	var ce *control.Error
	if errors.As(err, &ce) {
		return err
	}
	host, port, _ := net.SplitHostPort(addr)
	wrapped := fmt.Errorf("dial %s %s: %w", transport, addr, err)
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return &control.Error{Err: fmt.Errorf("%w %q: %w", ErrDNS, host, err),
			Hint: "check the host name in --server (or server: in the profile); if the gateway is only known inside a VPN or VPC, connect the VPN first"}
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return &control.Error{Err: fmt.Errorf("%w: %w", ErrRefused, wrapped),
			Hint: "nothing listens on " + addr + ": check the port (the gateway's quic/tls port is " + DefaultPort + ", ssh " + DefaultSSHPort + ") and that the gateway runs, and that its security group allows TCP " + port + " from your address"}
	}
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) {
		if e := wrongServer(transport, addr, classify(rh.RecordHeader[:])); e != nil {
			return e
		}
		return &control.Error{Err: fmt.Errorf("%w: %w", ErrWrongServer, wrapped),
			Hint: "the server on " + addr + " does not speak TLS: check the port (the gateway's quic/tls port is " + DefaultPort + ", ssh " + DefaultSSHPort + ")"}
	}
	if transport == TransportSSH && !sawHostKey && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
		return &control.Error{Err: fmt.Errorf("ssh %s: %w: it closed the connection without an SSH greeting (%w), so this looks like the gateway's quic/tls port", addr, ErrWrongTransportPort, err),
			Hint: "drop --transport ssh to use this port, or point --server at the gateway's ssh port (default " + DefaultSSHPort + ")"}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		hint := "check the host and port, and that the gateway's security group allows TCP " + port + " from your address"
		if transport == TransportQUIC {
			hint = "UDP may be blocked on this network or by the gateway's security group (UDP " + port + "): try --transport tls"
		}
		return &control.Error{Err: fmt.Errorf("%w: %w", ErrNoAnswer, wrapped), Hint: hint}
	}
	return wrapped
}
