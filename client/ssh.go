package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"unicode"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/tunnel"
)

// dialSSH opens an SSH session to addr. The SSH handshake authenticates
// the key (publickey, user = target name), so the Hello that follows on the
// control channel carries no proof. verify checks the host key against
// known_hosts.
//
// A refusal comes back as an *control.Error wrapping ErrAuthFailed. The gateway
// explains refusals of keys it knows (expired, wrong source address,
// certificate principals) in an SSH banner, which becomes the message; a
// key it does not know at all gets no explanation, as in OpenSSH.
func (c *Client) dialSSH(ctx context.Context, addr string, verify func(ssh.PublicKey) error) (tunnel.Session, error) {
	signers := uniqueSigners(c.signers)
	var (
		mu      sync.Mutex // guards the following
		offered bool       // authentication reached the publickey method
		banners []string
	)
	conf := &ssh.ClientConfig{
		User: sshUser(c.opts.Target),
		// Only the configured keys, as OpenSSH's IdentitiesOnly: the
		// gateway allows 6 attempts per connection.
		Auth: []ssh.AuthMethod{ssh.PublicKeysCallback(func() ([]ssh.Signer, error) {
			mu.Lock()
			offered = true
			mu.Unlock()
			return signers, nil
		})},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error { return verify(key) },
		// Negotiate the algorithm of the pinned key (or of a trusted host
		// CA): x/crypto would otherwise prefer another of the host's keys
		// and the check would fail as a mismatch.
		HostKeyAlgorithms: c.hosts.HostKeyAlgorithms(addr),
		BannerCallback: func(msg string) error {
			mu.Lock()
			defer mu.Unlock()
			if len(banners) < maxBanners {
				banners = append(banners, cleanBanner(msg))
			}
			return nil
		},
		ClientVersion: "SSH-2.0-cachetun_" + sshSoftwareVersion(c.opts.Version),
	}
	sc := tunnel.DefaultSSHConfig()
	sc.LocalAddr = c.opts.LocalAddr
	sc.KeepAlive = c.opts.Ping
	sess, err := tunnel.DialSSH(ctx, addr, conf, sc)
	if err == nil {
		return sess, nil
	}
	mu.Lock()
	defer mu.Unlock()
	if !offered || ctx.Err() != nil || isNetworkError(err) {
		return nil, err
	}
	// The handshake got as far as authentication and the gateway said no.
	for _, b := range banners {
		if strings.HasPrefix(b, control.RateLimitedPrefix) { // no key would help
			return nil, &control.Error{Err: fmt.Errorf("%w: %s", ErrRateLimited, b), Hint: rateLimitedHint}
		}
	}
	if len(banners) > 0 {
		return nil, &control.Error{Err: fmt.Errorf("%w: %s", ErrAuthFailed, strings.Join(banners, "; ")), Hint: sshAuthHint}
	}
	if len(signers) == 1 {
		pub := signers[0].PublicKey()
		if cert, ok := pub.(*ssh.Certificate); ok {
			return nil, &control.Error{
				Err: keyVerdict{fmt.Errorf("%w: certificate %q for key %s is not authorized in the gateway's authorized_keys",
					ErrAuthFailed, cert.KeyId, auth.Fingerprint(cert.Key))},
				Hint: "ask the gateway's operator to trust your CA (" + auth.Fingerprint(cert.SignatureKey) +
					") with a cert-authority line in its authorized_keys", Fix: control.FixOperator}
		}
		return nil, &control.Error{
			Err: keyVerdict{fmt.Errorf("%w: key %s is not authorized in the gateway's authorized_keys", ErrAuthFailed, auth.Fingerprint(pub))},
			Hint: "ask the gateway's operator to add your public key to its authorized_keys: " +
				strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))), Fix: control.FixOperator}
	}
	fps := make([]string, len(signers))
	for i, s := range signers {
		fps[i] = auth.Fingerprint(s.PublicKey())
		if c.keys != nil && len(c.keys.names) == len(signers) {
			fps[i] = c.keys.names[i] // where the key came from, with its fingerprint
		}
	}
	return nil, &control.Error{
		Err:  keyVerdict{fmt.Errorf("%w: none of the keys offered (%s) is authorized in the gateway's authorized_keys", ErrAuthFailed, strings.Join(fps, ", "))},
		Hint: "ask the gateway's operator to add your public key (the .pub line) to its authorized_keys, or pass -i with a key it knows", Fix: control.FixOperator}
}

// rateLimitedHint is the hint of a rate-limited source on SSH (on QUIC and
// TLS the gateway sends its own with CodeRateLimited).
const rateLimitedHint = "wait for the time it names: the gateway counts failed and abandoned authentications per source address (limits.auth_failures_per_minute); check the key and the gateway address"

// sshAuthHint: what the gateway's banners name (an expired key, an address
// from= does not allow, a certificate's principals) is changed in its
// authorized_keys, by its operator.
const sshAuthHint = "ask the gateway's operator to fix what it names above (authorized_keys), or pass -i with another key"

// maxBanners bounds the banners kept from one handshake.
const maxBanners = 8

// uniqueSigners drops signers whose public key (or certificate) came
// earlier in the list, e.g. a key both in ssh-agent and on disk.
func uniqueSigners(in []ssh.Signer) []ssh.Signer {
	seen := make(map[string]bool, len(in))
	var out []ssh.Signer
	for _, s := range in {
		k := string(s.PublicKey().Marshal())
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, s)
	}
	return out
}

// cleanBanner makes a banner from the gateway one line of printable text,
// without the "cachetun: " prefix the gateway puts there for OpenSSH users.
func cleanBanner(msg string) string {
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	msg = strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			return ' '
		case unicode.IsControl(r) || r == unicode.ReplacementChar:
			return -1
		}
		return r
	}, msg)
	return strings.TrimPrefix(strings.TrimSpace(msg), "cachetun: ")
}

// isNetworkError reports whether err is the connection failing rather than
// a verdict of the gateway.
func isNetworkError(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne)
}

// sshSoftwareVersion makes v fit the softwareversion of an SSH
// identification string: printable US-ASCII without spaces or minus signs
// (RFC 4253 §4.2).
func sshSoftwareVersion(v string) string {
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r > '~' || r == '-' {
			return '_'
		}
		return r
	}, v)
}

// sshUser is the SSH user name: the first target, which grants nothing by
// itself; a listing or --all has none.
func sshUser(target string) string {
	if target == "" {
		return "cachetun"
	}
	return target
}
