package testenv

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// cmdTimeout bounds one command on an admin connection.
const cmdTimeout = 10 * time.Second

// redisError is an error reply (-ERR ...) from the server.
type redisError string

func (e redisError) Error() string { return string(e) }

// respConn is a minimal RESP2 client, used for the admin connection and for
// readiness probes so that testenv controls exactly which connections it
// opens. Replies decode to string (simple and bulk), int64, nil (null bulk
// or array), []any, or a redisError returned as the error.
type respConn struct {
	mu sync.Mutex // guards the following
	c  net.Conn
	br *bufio.Reader
}

func dialRESP(ctx context.Context, addr string, tlsConf *tls.Config) (*respConn, error) {
	var (
		c   net.Conn
		err error
	)
	if tlsConf != nil {
		d := tls.Dialer{Config: tlsConf}
		c, err = d.DialContext(ctx, "tcp", addr)
	} else {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	return &respConn{c: c, br: bufio.NewReader(c)}, nil
}

func (rc *respConn) Close() error { return rc.c.Close() }

// do sends one command and reads its reply. A server error reply is returned
// as redisError; any other error leaves the connection unusable.
func (rc *respConn) do(ctx context.Context, args ...string) (any, error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	deadline := time.Now().Add(cmdTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	// Cancelling ctx interrupts a blocked read or write.
	defer context.AfterFunc(ctx, func() { rc.c.SetDeadline(time.Unix(1, 0)) })()
	if err := rc.c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(rc.c, b.String()); err != nil {
		return nil, err
	}
	v, err := readRESP(rc.br)
	if err != nil {
		return nil, err
	}
	if e, ok := v.(redisError); ok {
		return nil, e
	}
	return v, nil
}

// str runs a command whose reply is a string.
func (rc *respConn) str(ctx context.Context, args ...string) (string, error) {
	v, err := rc.do(ctx, args...)
	if err != nil {
		return "", err
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s: unexpected reply %T", args[0], v)
	}
	return s, nil
}

func readRESP(br *bufio.Reader) (any, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("malformed reply line %q", line)
	}
	kind, body := line[0], line[1:len(line)-2]
	switch kind {
	case '+':
		return body, nil
	case '-':
		return redisError(body), nil
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, fmt.Errorf("malformed bulk length %q", body)
		}
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, fmt.Errorf("malformed array length %q", body)
		}
		if n < 0 {
			return nil, nil
		}
		arr := make([]any, n)
		for i := range arr {
			if arr[i], err = readRESP(br); err != nil {
				return nil, err
			}
		}
		return arr, nil
	}
	return nil, fmt.Errorf("unknown reply type %q", kind)
}

// infoField returns field from an INFO reply.
func infoField(info, field string) (string, bool) {
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimRight(line, "\r\n"), ":")
		if ok && k == field {
			return v, true
		}
	}
	return "", false
}

// infoInt returns an integer field from an INFO reply.
func infoInt(info, field string) (int64, error) {
	v, ok := infoField(info, field)
	if !ok {
		return 0, fmt.Errorf("INFO has no field %q", field)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("INFO field %q: %w", field, err)
	}
	return n, nil
}

// isRedisError reports whether err is an error reply from the server.
func isRedisError(err error) bool {
	var re redisError
	return errors.As(err, &re)
}
