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
	"time"
)

// ErrUpstreamAuth means the cache refused the gateway's credentials.
var ErrUpstreamAuth = errors.New("upstream refused AUTH")

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
		return fmt.Errorf("read upstream AUTH reply: %w", err)
	}
	if line != "+OK" {
		// The reply is the server's error text, e.g. WRONGPASS; it holds
		// no secret.
		return fmt.Errorf("%w: %s", ErrUpstreamAuth, strings.TrimPrefix(line, "-"))
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
	return "", errors.New("reply line too long")
}

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
