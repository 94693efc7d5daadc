package server

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/tunnel"
)

// The SSH listener authenticates clients in the SSH handshake itself, with
// the same authorized_keys decisions as the other transports:
//
//   - PublicKeyCallback answers the client's "would you accept this key?"
//     queries. It refuses keys that authorized_keys does not know at all (no
//     reason is sent: the client has not proved it holds the key), and any
//     key while the source address is over its failed-authentication
//     budget. Other keys are let through to the signature.
//   - VerifiedPublicKeyCallback runs once the client has signed with the
//     key. Only there is the key authorized (auth.AuthorizedKeys.Authorize)
//     and the *auth.Identity stored in the Permissions, which x/crypto
//     guarantees belong to the key that authenticated (CVE-2024-45337 was
//     trusting a key merely offered). A refusal (expired key or
//     certificate, from= or source-address, principals outside targets=)
//     is sent to the client as an SSH banner, which OpenSSH prints and the
//     cachetun client turns into its error message.
//
// The target is not decided here: stock clients name it per channel
// (direct-tcpip "TARGET:PORT"), the cachetun client on its control channel.

// sshServerVersion is the gateway's SSH identification string (RFC 4253
// §4.2); it carries no version.
const sshServerVersion = "SSH-2.0-cachetun"

// errRateLimited refuses every key from an address over its budget.
var errRateLimited = errors.New("too many failed authentications from this address")

func (s *Server) listenSSH(addr string) (tunnel.Listener, error) {
	conf, err := s.sshServerConfig()
	if err != nil {
		return nil, err
	}
	sc := tunnel.DefaultSSHConfig()
	// The SSH handshake includes client authentication.
	sc.HandshakeTimeout = s.config().Limits.HandshakeTimeout + s.config().Limits.AuthTimeout
	sc.MaxStreams = s.config().Limits.MaxStreamsPerSession
	sc.Admission = s.transportAdmission("ssh")
	return tunnel.ListenSSH(addr, conf, sc)
}

func (s *Server) sshServerConfig() (*ssh.ServerConfig, error) {
	conf := &ssh.ServerConfig{
		MaxAuthTries:              control.MaxHelloTries,
		PublicKeyCallback:         s.sshOfferedKey,
		VerifiedPublicKeyCallback: s.sshVerifiedKey,
		// No SHA-1 (ssh-rsa) nor DSA signatures, as on the other transports.
		PublicKeyAuthAlgorithms: []string{
			ssh.KeyAlgoED25519, ssh.KeyAlgoSKED25519,
			ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoSKECDSA256,
			ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSASHA512,
		},
		// No version in the identification string: a peer that has not
		// authenticated learns nothing to pick exploits by.
		ServerVersion: sshServerVersion,
	}
	conf.AddHostKey(s.hostSigner) // algorithms: tunnel.SSHAlgorithms, set by ListenSSH
	if s.hostCert != nil {
		cs, err := ssh.NewCertSigner(s.hostCert, s.hostSigner)
		if err != nil {
			return nil, fmt.Errorf("ssh host certificate %q: %w", s.config().HostCert, err)
		}
		conf.AddHostKey(cs) // offered to clients that trust a host CA
	}
	return conf, nil
}

// sshOfferedKey is the PublicKeyCallback: a first, cheap filter that may
// run for keys the client does not hold. It grants nothing.
func (s *Server) sshOfferedKey(conn ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	ip := remoteIP(conn.RemoteAddr())
	if limited, msg := s.rateLimited(ip); limited {
		s.metrics.authFailures.WithLabelValues(string(control.CodeRateLimited)).Inc()
		s.log.Warn("authentication refused: "+msg,
			keyTransport, "ssh", keyRemote, conn.RemoteAddr().String(), "auth_failures_per_minute", s.config().Limits.AuthFailuresPerMinute)
		return nil, &ssh.BannerError{Err: errRateLimited, Message: "cachetun: " + msg + "\n"}
	}
	if _, err := s.keys.Load().Authorize(key, ip, time.Now()); errors.Is(err, auth.ErrUnknownKey) {
		s.sshAuthFailed(conn, key, err)
		return nil, err
	}
	return &ssh.Permissions{}, nil
}

// sshVerifiedKey is the VerifiedPublicKeyCallback: the client has signed
// with key, so it is authorized here and the identity recorded.
func (s *Server) sshVerifiedKey(conn ssh.ConnMetadata, key ssh.PublicKey, _ *ssh.Permissions, _ string) (*ssh.Permissions, error) {
	ip := remoteIP(conn.RemoteAddr())
	id, err := s.keys.Load().Authorize(key, ip, time.Now())
	if err != nil {
		s.sshAuthFailed(conn, key, err)
		return nil, &ssh.BannerError{Err: err, Message: "cachetun: " + s.clientAuthError(err) + "\n"}
	}
	return &ssh.Permissions{ExtraData: map[any]any{tunnel.SSHAuthInfoKey: id}}, nil
}

// clientAuthError words an authorization refusal for the client: what
// auth says, with the gateway's file names taken out (the operator's log
// keeps them). A client that has not authenticated learns nothing of the
// host's layout (issue 10, finding 7).
func (s *Server) clientAuthError(err error) string {
	msg := err.Error()
	for _, p := range []string{s.keys.Load().Name(), s.config().AuthorizedKeys} {
		if p != "" {
			msg = strings.ReplaceAll(msg, p, "the gateway's authorized_keys")
		}
	}
	return msg
}

// sshAuthFailed logs a refused key. It is not counted against the source
// here: a connection that ends unauthenticated counts once, when its
// handshake fails (serverAdmission), however many keys it offered.
func (s *Server) sshAuthFailed(conn ssh.ConnMetadata, key ssh.PublicKey, err error) {
	code := authCode(err)
	s.metrics.authFailures.WithLabelValues(string(code)).Inc()
	s.log.Warn("authentication failed", keyTransport, "ssh", keyRemote, conn.RemoteAddr().String(),
		"user", conn.User(), keyKeyFP, auth.Fingerprint(key), "code", code, keyErr, err)
}
