package server

// Discovered nodes are verified, not trusted. What a cache announces about
// its nodes is under the control of anyone who can run CONFIG SET on one
// of them, which every user of a redis-cluster target can, through the
// tunnel. So a node learned from CLUSTER SHARDS or SLOTS (also when a
// client's MOVED asked for the round) or from an ElastiCache node list is
// published only when:
//
//  1. its host is an IP, or a name that the gateway resolves once, here;
//     every resulting IP must pass the target's netPolicy;
//  2. for Redis Cluster, a connection to that checked IP (with the
//     target's TLS; AUTH only now that the IP passed) answers CLUSTER MYID
//     with the id the node was announced under;
//  3. from then on the gateway dials the node only at that checked IP
//     (target.dialAddrs), so a DNS answer that changes later has nothing
//     to rebind.
//
// A refused node is left out of the topology, logged once per change
// (address, id, reason) and counted in
// cachetun_discovery_rejected_nodes_total{target,reason}. Seeds, which the
// operator wrote, are trusted as written. Results are kept per (address,
// id, IP): a steady cluster is not verified again every round, a node
// that moves or changes id is.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cachetun/cachetun/control"
)

const (
	// vetParallel bounds the verifications of one round that run at once.
	vetParallel = 8
	// vetRetry is how long a failed verification stands before the node
	// is tried again (a node announced before it listens).
	vetRetry = 30 * time.Second
	// maxNodeIDLen bounds a CLUSTER MYID answer; ids are 40 hex digits.
	maxNodeIDLen = 64
)

// vetState is the memory of the checks of one target's discovered nodes.
type vetState struct {
	mu sync.Mutex // guards the following
	// checked holds the results of the checks that dial, by
	// vetKey(addr, id, ip).
	checked map[string]vetEntry
	// refusals holds the current refusal of each refused node, by
	// node+" "+id, so that a refusal is logged once, not every round.
	refusals map[string]string
}

type vetEntry struct {
	err error // nil: verified
	at  time.Time
}

// vetResult is the outcome of the checks of one node.
type vetResult struct {
	dial string // the checked ip:port to dial; "" for a seed
	err  error  // a *NodeRefusedError
}

func lookupNetIP(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// vetNodes checks discovered nodes and returns those that passed, in
// their order, and the address to dial for each. Refusals are logged once
// per change and counted.
func (s *Server) vetNodes(ctx context.Context, t *target, nodes []control.NodeInfo, log *slog.Logger) ([]control.NodeInfo, map[string]string) {
	self := interfaceAddrs()
	timeout := s.config().Limits.DialTimeout
	results := make([]vetResult, len(nodes))
	sem := make(chan struct{}, vetParallel)
	var wg sync.WaitGroup
	for i, n := range nodes {
		if slices.Contains(t.cfg.Nodes, n.Addr) {
			continue // a seed: trusted as the operator wrote it
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			vctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			results[i] = t.vetNode(vctx, n, self)
		}()
	}
	wg.Wait()

	v := &t.vet
	v.mu.Lock()
	defer v.mu.Unlock()
	prev := v.refusals
	v.refusals = make(map[string]string)
	out := make([]control.NodeInfo, 0, len(nodes))
	dials := make(map[string]string, len(nodes))
	for i, n := range nodes {
		r := results[i]
		key := n.Addr + " " + n.ID
		if r.err == nil {
			out = append(out, n)
			if r.dial != "" {
				dials[n.Addr] = r.dial
			}
			if _, was := prev[key]; was {
				log.Info("discovered node admitted", keyNode, n.Addr, "id", n.ID, "dial", r.dial)
			}
			continue
		}
		reason := rejectBadAddr
		if re, ok := r.err.(*NodeRefusedError); ok {
			reason = re.Reason
		}
		v.refusals[key] = reason
		if prev[key] == reason {
			continue // said already
		}
		log.Warn("discovered node refused: not published, not dialled", keyNode, sanitizeReply(n.Addr), "id", sanitizeReply(n.ID), "reason", reason, keyErr, r.err)
		if s.metrics != nil {
			s.metrics.discoveryRejected.WithLabelValues(t.name, reason).Inc()
		}
	}
	return out, dials
}

// vetKey names one check that dials: a node, the id it claims, the IP.
func vetKey(addr, id, ip string) string { return addr + "\x00" + id + "\x00" + ip }

// vetNode runs the checks of one discovered node.
func (t *target) vetNode(ctx context.Context, n control.NodeInfo, self []netip.Addr) vetResult {
	host, portStr, err := net.SplitHostPort(n.Addr)
	port, perr := strconv.ParseUint(portStr, 10, 16)
	if err != nil || perr != nil || port == 0 {
		return vetResult{err: refused(rejectBadAddr, "%q is not host:port", sanitizeReply(n.Addr))}
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return vetResult{err: refused(rejectBadAddr, "%s has an IPv6 zone: scoped addresses are never admitted", n.Addr)}
		}
		ips = []netip.Addr{ip}
	} else {
		if !validHostname(host) {
			return vetResult{err: refused(rejectBadAddr, "%q is neither an IP nor a host name", sanitizeReply(host))}
		}
		// The one resolution: what it returns is checked, and what is
		// checked is dialled.
		ips, err = t.lookup(ctx, host)
		if err != nil || len(ips) == 0 {
			return vetResult{err: refused(rejectResolve, "host %s did not resolve: %v", host, err)}
		}
	}
	// Every address the name has must pass: a name that also points
	// elsewhere is not the cache's.
	for _, ip := range ips {
		if err := t.policy.check(ip, self); err != nil {
			if ip.String() != host {
				err = refused(err.(*NodeRefusedError).Reason, "host %s resolves to %s: %v", host, ip, err)
			}
			return vetResult{err: err}
		}
	}
	dial := netip.AddrPortFrom(ips[0].Unmap(), uint16(port)).String()
	if t.cfg.Type != TypeRedisCluster {
		return vetResult{dial: dial} // memcached nodes have no id to prove
	}
	if !validNodeID(n.ID) {
		return vetResult{err: refused(rejectNoID, "%s was announced without a cluster node id (CLUSTER SLOTS of Redis before 4.0), so it cannot be verified", n.Addr)}
	}
	key := vetKey(n.Addr, n.ID, dial)
	v := &t.vet
	v.mu.Lock()
	e, ok := v.checked[key]
	v.mu.Unlock()
	if ok && (e.err == nil || time.Since(e.at) < vetRetry) {
		return vetResult{dial: dial, err: e.err}
	}
	err = t.verifyClusterNode(ctx, dial, host, n.ID)
	v.mu.Lock()
	if v.checked == nil {
		v.checked = make(map[string]vetEntry)
	}
	v.checked[key] = vetEntry{err: err, at: time.Now()}
	v.mu.Unlock()
	return vetResult{dial: dial, err: err}
}

// forgetChecks drops the check results of nodes no longer announced, so
// the memory follows the cluster's size.
func (t *target) forgetChecks(nodes []control.NodeInfo) {
	live := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		live[n.Addr+"\x00"+n.ID+"\x00"] = true
	}
	v := &t.vet
	v.mu.Lock()
	defer v.mu.Unlock()
	for k := range v.checked {
		i := strings.LastIndexByte(k, 0)
		if !live[k[:i+1]] {
			delete(v.checked, k)
		}
	}
}

// verifyClusterNode checks that the redis-server at dial is the cluster
// node id: it answers CLUSTER MYID with it. The connection has the
// target's TLS (for serverName) and AUTH.
func (t *target) verifyClusterNode(ctx context.Context, dial, serverName, id string) error {
	c, err := t.dialAt(ctx, dial, serverName)
	if err != nil {
		return refused(rejectUnreachable, "could not connect to %s to verify it is cluster node %s: %v", dial, id, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, "*2\r\n$7\r\nCLUSTER\r\n$4\r\nMYID\r\n"); err != nil {
		return refused(rejectUnreachable, "send CLUSTER MYID to %s: %v", dial, err)
	}
	got, err := readMyID(bufio.NewReaderSize(c, 512))
	if err != nil {
		return refused(rejectIDMismatch, "%s is not cluster node %s: %v", dial, id, err)
	}
	if got != id {
		return refused(rejectIDMismatch, "%s is not cluster node %s: it answered CLUSTER MYID with %q", dial, id, sanitizeReply(got))
	}
	return nil
}

// readMyID reads the reply to CLUSTER MYID: a bulk or simple string
// holding a node id. Any other reply (an error: a standalone Redis, or
// not Redis at all) is an error whose text quotes at most a sanitised
// prefix of it.
func readMyID(br *bufio.Reader) (string, error) {
	line, err := readTextLine(br)
	if err != nil {
		return "", fmt.Errorf("read CLUSTER MYID reply: %w", err)
	}
	if line == "" {
		return "", fmt.Errorf("empty CLUSTER MYID reply")
	}
	switch line[0] {
	case '+':
		if id := line[1:]; len(id) <= maxNodeIDLen {
			return id, nil // the caller compares it
		}
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n <= 0 || n > maxNodeIDLen {
			break
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(br, b); err != nil {
			return "", fmt.Errorf("read CLUSTER MYID reply: %w", err)
		}
		if string(b[n:]) == "\r\n" {
			return string(b[:n]), nil // the caller compares it
		}
	case '-':
		return "", fmt.Errorf("it answered CLUSTER MYID with an error: %q", sanitizeReply(line[1:]))
	}
	return "", fmt.Errorf("it answered CLUSTER MYID with %q, not a node id", sanitizeReply(line))
}

// validNodeID reports whether id looks like a Redis Cluster node id: 40
// hex digits.
func validNodeID(id string) bool {
	if len(id) != 40 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// validHostname reports whether h is a DNS host name (letters, digits,
// '-', '_', dots; labels of 1-63, at most 253 in all).
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
