package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Upstream failures. Their messages are cachetun's own: a byte that an
// upstream sent reaches at most the gateway's log, as a short sanitised
// prefix (sanitizeReply), and never a client (upstreamFailure).
var (
	// ErrUpstreamAuth means the cache refused the gateway's credentials.
	ErrUpstreamAuth = errors.New("upstream refused AUTH")
)

// maxReplyPrefix is how much of an upstream's answer the log keeps.
const maxReplyPrefix = 64

// sanitizeReply returns at most maxReplyPrefix bytes of b, printable ASCII
// only (anything else becomes '?'), for a log line that quotes it with %q.
func sanitizeReply(b string) string {
	if len(b) > maxReplyPrefix {
		b = b[:maxReplyPrefix]
	}
	out := []byte(b)
	for i, c := range out {
		if c < 0x20 || c > 0x7e {
			out[i] = '?'
		}
	}
	return string(out)
}

// tlsError wraps a failed upstream handshake in a message of cachetun's
// own: x509 errors quote the names in the node's certificate.
func tlsError(err error, serverName string) error {
	var (
		host    x509.HostnameError
		unknown x509.UnknownAuthorityError
		invalid x509.CertificateInvalidError
		msg     string
	)
	switch {
	case errors.As(err, &host):
		msg = fmt.Sprintf("the node's certificate is not valid for %q", serverName)
	case errors.As(err, &unknown):
		msg = "the node's certificate is signed by an authority that ca_file does not hold"
	case errors.As(err, &invalid):
		msg = "the node's certificate is invalid (expired, not yet valid, or not for a server)"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		msg = "timed out"
	default:
		msg = fmt.Sprintf("%q", sanitizeReply(err.Error()))
	}
	return &wrapped{msg: errUpstreamTLS.Error() + ": " + msg, is: errUpstreamTLS, err: err}
}

// wrapped is an error whose message is cachetun's own while errors.Is and
// errors.As still see the cause.
type wrapped struct {
	msg string
	is  error
	err error
}

func (e *wrapped) Error() string        { return e.msg }
func (e *wrapped) Unwrap() []error      { return []error{e.is, e.err} }
func (e *wrapped) Is(target error) bool { return target == e.is }

// upstreamFailure is the sentence a client gets when the gateway could not
// open its stream's upstream connection: a status and words of cachetun's
// own, never the error text (which may quote the upstream).
func upstreamFailure(node string, err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, ErrUpstreamAuth):
		return fmt.Sprintf("the cache at %s refused the gateway's credentials: ask the gateway's operator to check the target's auth settings", node)
	case errors.Is(err, errUpstreamTLS):
		return fmt.Sprintf("the TLS handshake between the gateway and %s failed: ask the gateway's operator to check the target's tls settings", node)
	case errors.Is(err, ErrNodeRefused):
		return fmt.Sprintf("%s is not a verified node of the target: retry after the next topology update", node)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("%s refused the gateway's connection: the node may be down or restarting", node)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("the gateway timed out connecting to %s", node)
	}
	return fmt.Sprintf("the gateway could not connect to %s", node)
}

// redisAuth sends AUTH [username] password on a fresh upstream connection
// and reads the one-line reply without reading past it. The password is
// never part of an error.
func redisAuth(ctx context.Context, c net.Conn, username string, password []byte) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
		defer c.SetDeadline(time.Time{})
	}
	args := [][]byte{[]byte("AUTH")}
	if username != "" {
		args = append(args, []byte(username))
	}
	args = append(args, password)
	var b bytes.Buffer
	b.WriteString("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b.WriteString("$" + strconv.Itoa(len(a)) + "\r\n")
		b.Write(a)
		b.WriteString("\r\n")
	}
	_, err := c.Write(b.Bytes())
	clear(b.Bytes())
	if err != nil {
		return fmt.Errorf("send upstream AUTH: %w", err)
	}
	line, err := readLine(c, 512)
	if err != nil {
		if errors.Is(err, errLineTooLong) {
			return fmt.Errorf("%w: its answer is not a RESP line", ErrUpstreamAuth)
		}
		return fmt.Errorf("read upstream AUTH reply: %w", err)
	}
	if line != "+OK" {
		// The reply is whatever the node sent (WRONGPASS from Redis, or
		// anything from something else): only the log sees it, sanitised.
		return fmt.Errorf("%w: it answered %q", ErrUpstreamAuth, sanitizeReply(line))
	}
	return nil
}

// readLine reads up to CRLF one byte at a time so that nothing after the
// line is consumed.
func readLine(c net.Conn, max int) (string, error) {
	var line []byte
	var one [1]byte
	for len(line) < max {
		if _, err := c.Read(one[:]); err != nil {
			return "", err
		}
		if one[0] == '\n' {
			return strings.TrimSuffix(string(line), "\r"), nil
		}
		line = append(line, one[0])
	}
	return "", errLineTooLong
}

var errLineTooLong = errors.New("reply line too long")

// upstreamTLSConfig builds the TLS client configuration for a target.
func upstreamTLSConfig(u *UpstreamTLS) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: u.ServerName, InsecureSkipVerify: u.InsecureSkipVerify}
	if u.CAFile != "" {
		pem, err := os.ReadFile(u.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read upstream ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream ca_file %q holds no PEM certificate", u.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// readSecret reads a password file, refusing files others can read.
func readSecret(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read password_file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("password_file %q has permissions %04o, too open: run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read password_file: %w", err)
	}
	return bytes.TrimRight(b, "\r\n"), nil
}
