package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/cachetun/cachetun/control"
)

// ElastiCache auto discovery. A configuration endpoint answers
//
//	config get cluster\r\n
//
// with
//
//	CONFIG cluster 0 <length>\r\n
//	<version>\n
//	<host>|<ip>|<port> <host>|<ip>|<port> ...\n
//	\r\n
//	END\r\n
//
// where <length> counts the bytes of the version and node lines.

// Limits of a configuration reply.
const (
	maxConfigBody  = 1 << 20
	maxConfigNodes = 1024
)

// ErrNotConfigEndpoint means a memcached node did not answer config get
// cluster as an ElastiCache configuration endpoint does.
var ErrNotConfigEndpoint = errors.New("not an ElastiCache configuration endpoint")

// queryElastiCache asks one configuration endpoint for the nodes.
func (t *target) queryElastiCache(ctx context.Context, addr string) ([]control.NodeInfo, error) {
	c, err := t.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := io.WriteString(c, "config get cluster\r\n"); err != nil {
		return nil, fmt.Errorf("send config get cluster: %w", err)
	}
	br := bufio.NewReaderSize(c, 4096)
	body, err := readConfigReply(br)
	if err != nil {
		return nil, err
	}
	_, nodes, err := parseClusterConfig(body)
	return nodes, err
}

// readConfigReply reads a "CONFIG cluster" reply and returns its body.
func readConfigReply(br *bufio.Reader) ([]byte, error) {
	line, err := readTextLine(br)
	if err != nil {
		return nil, fmt.Errorf("read config reply: %w", err)
	}
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != "CONFIG" || f[1] != "cluster" {
		return nil, fmt.Errorf("%w: answered %q", ErrNotConfigEndpoint, sanitizeReply(line))
	}
	n, err := strconv.Atoi(f[3])
	if err != nil || n < 0 || n > maxConfigBody {
		return nil, fmt.Errorf("%w: bad length in %q", ErrNotConfigEndpoint, sanitizeReply(line))
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, fmt.Errorf("read config reply: %w", err)
	}
	for range 3 { // the empty line, then END
		l, err := readTextLine(br)
		if err != nil {
			return nil, fmt.Errorf("read config reply: %w", err)
		}
		if l == "END" {
			return body, nil
		}
		if l != "" {
			break
		}
	}
	return nil, fmt.Errorf("%w: no END after the node list", ErrNotConfigEndpoint)
}

// parseClusterConfig parses the body of a config reply: the version, then
// the node list. Nodes come back sorted by address, role RoleNode, ID the
// host name.
func parseClusterConfig(body []byte) (int64, []control.NodeInfo, error) {
	lines := strings.SplitN(string(body), "\n", 3)
	if len(lines) < 2 {
		return 0, nil, fmt.Errorf("%w: no node list", ErrNotConfigEndpoint)
	}
	version, err := strconv.ParseInt(strings.TrimSpace(lines[0]), 10, 64)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: bad version %q", ErrNotConfigEndpoint, sanitizeReply(lines[0]))
	}
	var nodes []control.NodeInfo
	for _, e := range strings.Fields(lines[1]) {
		parts := strings.Split(e, "|")
		if len(parts) != 3 {
			return 0, nil, fmt.Errorf("%w: bad node %q", ErrNotConfigEndpoint, sanitizeReply(e))
		}
		host, ip, port := parts[0], parts[1], parts[2]
		if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
			return 0, nil, fmt.Errorf("%w: bad port in %q", ErrNotConfigEndpoint, sanitizeReply(e))
		}
		addrHost := ip
		if addrHost == "" {
			addrHost = host
		}
		if addrHost == "" {
			return 0, nil, fmt.Errorf("%w: node %q has neither host nor ip", ErrNotConfigEndpoint, sanitizeReply(e))
		}
		nodes = append(nodes, control.NodeInfo{Addr: net.JoinHostPort(addrHost, port), ID: host, Role: RoleNode})
		if len(nodes) > maxConfigNodes {
			return 0, nil, fmt.Errorf("%w: more than %d nodes", ErrNotConfigEndpoint, maxConfigNodes)
		}
	}
	return version, sortNodes(nodes), nil
}

// withEndpoints puts the configured endpoints first (role RoleConfig), so
// that they keep the first client ports, then the discovered nodes.
func (t *target) withEndpoints(nodes []control.NodeInfo) []control.NodeInfo {
	out := make([]control.NodeInfo, 0, len(t.cfg.Nodes)+len(nodes))
	seen := make(map[string]bool, cap(out))
	for _, a := range t.cfg.Nodes {
		if !seen[a] {
			seen[a] = true
			out = append(out, control.NodeInfo{Addr: a, Role: RoleConfig})
		}
	}
	for _, n := range nodes {
		if !seen[n.Addr] {
			seen[n.Addr] = true
			out = append(out, n)
		}
	}
	return out
}

// readTextLine reads one CRLF (or LF) line of at most 1 KiB.
func readTextLine(br *bufio.Reader) (string, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		line = append(line, frag...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
		if len(line) > 1024 {
			return "", errors.New("reply line too long")
		}
	}
	if len(line) > 1024 {
		return "", errors.New("reply line too long")
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}
