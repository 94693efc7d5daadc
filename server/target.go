package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/tunnel"
)

// errUpstreamTLS wraps a failed TLS handshake with a cache node.
var errUpstreamTLS = errors.New("upstream tls handshake")

// target is a configured target and its current nodes. Static targets
// keep their configured nodes; cluster targets replace them on discovery.
type target struct {
	name string
	cfg  *Target
	// upstreamTLS is nil for plaintext upstreams.
	upstreamTLS *tls.Config
	// password is the upstream AUTH secret; never logged, never sent to a
	// client.
	password []byte
	// caPEM is the content of tls.ca_file, to tell a changed file on
	// reload.
	caPEM []byte
	// life ends when a reload removes or replaces the target: its
	// streams are cut, its control streams move on (reload.go).
	life   context.Context
	retire context.CancelFunc
	// held is the parent of the target's resumable relays: it ends with
	// the server's context heldOf or with life (resumeParent).
	heldMu sync.Mutex
	heldOf context.Context
	held   context.Context
	// refresh wakes the discovery loop of cluster targets; nil otherwise.
	refresh chan struct{}
	// discovered is closed after the first discovery round of targets
	// that discover; nil otherwise.
	discovered     chan struct{}
	discoveredOnce sync.Once
	// policy says where discovered nodes may live.
	policy *netPolicy
	// lookup resolves a discovered node's host name; tests replace it.
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	// vet remembers which discovered nodes passed or failed their checks.
	vet vetState

	mu      sync.RWMutex // guards the following
	info    control.TargetInfo
	nodes   map[string]bool // set of info.Nodes[i].Addr
	changed chan struct{}   // closed and replaced on every change
	// dialAddrs maps each discovered node (info.Nodes[i].Addr) to the IP
	// and port that passed its checks: the only address the gateway
	// dials for it, so a host name is never resolved again in between.
	dialAddrs map[string]string
}

func newTarget(name string, cfg *Target) *target {
	t := &target{name: name, cfg: cfg, changed: make(chan struct{}), lookup: lookupNetIP}
	var err error
	if t.policy, err = parseNetworks(cfg.Networks); err != nil {
		t.policy = &netPolicy{explicit: true} // fail closed; Validate reports it
	}
	t.life, t.retire = context.WithCancel(context.Background())
	nodes := make([]control.NodeInfo, len(cfg.Nodes))
	for i, n := range cfg.Nodes {
		nodes[i] = control.NodeInfo{Addr: n}
		if cfg.Discovery == DiscoveryElastiCache {
			nodes[i].Role = RoleConfig
		}
	}
	t.setNodesLocked(nodes)
	if cfg.Type == TypeRedisCluster || cfg.Discovery == DiscoveryElastiCache {
		t.refresh = make(chan struct{}, 1)
		t.discovered = make(chan struct{})
	}
	return t
}

// resumeParent returns a context that ends when srv ends or the target
// is retired: the parent of its resumable relays, made once per server
// context, so that a stream costs one WithCancel and no AfterFunc.
func (t *target) resumeParent(srv context.Context) context.Context {
	t.heldMu.Lock()
	defer t.heldMu.Unlock()
	if t.heldOf != srv {
		ctx, cancel := context.WithCancel(srv)
		context.AfterFunc(t.life, cancel)
		t.heldOf, t.held = srv, ctx
	}
	return t.held
}

// isRetired reports whether a reload removed or replaced the target.
func (t *target) isRetired() bool { return t.life.Err() != nil }

// discovers reports whether the target learns its nodes from the cache.
func (t *target) discovers() bool { return t.discovered != nil }

// markDiscovered ends waitDiscovered: the first round is over, whatever
// its outcome.
func (t *target) markDiscovered() {
	t.discoveredOnce.Do(func() { close(t.discovered) })
}

// waitDiscovered waits, at most timeout, for the first discovery round of
// a target that discovers, so that the first topology a client sees is the
// discovered one and its port order holds from the start.
func (t *target) waitDiscovered(ctx context.Context, timeout time.Duration) {
	if t.discovered == nil {
		return
	}
	tm := time.NewTimer(timeout)
	defer tm.Stop()
	select {
	case <-t.discovered:
	case <-ctx.Done():
	case <-tm.C:
	}
}

// updateNodes replaces the topology and wakes the subscribers when nodes
// differ from the current topology; it reports whether they did. dials maps discovered nodes to the checked
// address to dial (see dialAddrs); it replaces the last one either way.
func (t *target) updateNodes(nodes []control.NodeInfo, dials map[string]string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dialAddrs = dials
	if slices.Equal(nodes, t.info.Nodes) {
		return false
	}
	t.setNodesLocked(nodes)
	close(t.changed)
	t.changed = make(chan struct{})
	return true
}

// knownAddrs returns the seeds, then the current nodes not among them.
func (t *target) knownAddrs() []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := slices.Clone(t.cfg.Nodes)
	for _, n := range t.info.Nodes {
		if !slices.Contains(out, n.Addr) {
			out = append(out, n.Addr)
		}
	}
	return out
}

// Info returns the current topology.
func (t *target) Info() control.TargetInfo {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.info
}

// Changed returns a channel closed at the next topology change.
func (t *target) Changed() <-chan struct{} {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.changed
}

func (t *target) setNodesLocked(nodes []control.NodeInfo) {
	t.info = control.TargetInfo{Name: t.name, Type: t.cfg.Type, Nodes: nodes, Version: t.info.Version + 1}
	t.nodes = make(map[string]bool, len(nodes))
	for _, n := range nodes {
		t.nodes[n.Addr] = true
	}
}

// HasNode reports whether addr is a node of the target right now. Cluster
// targets also keep accepting their seed addresses.
func (t *target) HasNode(addr string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.nodes[addr] {
		return true
	}
	for _, seed := range t.cfg.Nodes {
		if seed == addr {
			return true
		}
	}
	return false
}

// requestRefresh asks cluster targets to rediscover soon; static targets
// ignore it.
func (t *target) requestRefresh() {
	if t.refresh != nil {
		select {
		case t.refresh <- struct{}{}:
		default:
		}
	}
}

// nodeByIndex returns node i of the current topology.
func (t *target) nodeByIndex(i int) (string, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if i < 0 || i >= len(t.info.Nodes) {
		return "", false
	}
	return t.info.Nodes[i].Addr, true
}

// dial connects to one node of the target, with TLS and AUTH as
// configured. A seed is dialled as written; a discovered node only at the
// address that passed its checks (dialAddrs), so the password goes to
// nothing else.
func (t *target) dial(ctx context.Context, addr string) (net.Conn, error) {
	to, err := t.dialAddr(addr)
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(addr)
	return t.dialAt(ctx, to, host)
}

// dialAddr returns where to dial node addr.
func (t *target) dialAddr(addr string) (string, error) {
	if !t.discovers() || slices.Contains(t.cfg.Nodes, addr) {
		return addr, nil
	}
	t.mu.RLock()
	to, ok := t.dialAddrs[addr]
	t.mu.RUnlock()
	if !ok {
		return "", refused(rejectNetwork, "%s is not a verified node of target %q", addr, t.name)
	}
	return to, nil
}

// dialAt connects to to (an IP and port, or a seed as written), with TLS
// for serverName (unless the target names one) and AUTH as configured.
func (t *target) dialAt(ctx context.Context, to, serverName string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", to)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	if t.upstreamTLS != nil {
		cfg := t.upstreamTLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = serverName
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, tlsError(err, cfg.ServerName)
		}
		c = tc
	}
	if t.password != nil {
		if err := redisAuth(ctx, c, t.cfg.Auth.Username, t.password); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// resolve maps a stream request to a node address of this server's
// targets. Requests from cachetun clients name the target and the node
// address. Requests from stock SSH clients (direct-tcpip) name only a host
// and port: "TARGET" means node 0 of the target, "N.TARGET" node N, and any
// other host:port must be a node of a target.
func (s *Server) resolve(req tunnel.OpenRequest, allows func(string) bool) (*target, string, tunnel.Status, string) {
	set := s.targets() // one snapshot for the whole lookup
	if req.Target != "" {
		t := set.get(req.Target)
		if t == nil {
			return nil, "", tunnel.StatusUnknownTarget, fmt.Sprintf("target %q is not configured on this gateway", req.Target)
		}
		if !t.HasNode(req.Node) {
			return t, "", tunnel.StatusUnknownNode, fmt.Sprintf("%q is not a node of target %q", req.Node, req.Target)
		}
		return t, req.Node, tunnel.StatusOK, ""
	}
	host, _, err := net.SplitHostPort(req.Node)
	if err != nil {
		return nil, "", tunnel.StatusBadRequest, fmt.Sprintf("%q is not host:port", req.Node)
	}
	if t := set.get(host); t != nil {
		addr, _ := t.nodeByIndex(0)
		return t, addr, tunnel.StatusOK, ""
	}
	if i := strings.IndexByte(host, '.'); i > 0 {
		if t := set.get(host[i+1:]); t != nil {
			n, err := strconv.Atoi(host[:i])
			if addr, ok := t.nodeByIndex(n); err == nil && ok {
				return t, addr, tunnel.StatusOK, ""
			}
			return t, "", tunnel.StatusUnknownNode, fmt.Sprintf("target %q has no node %q (nodes are 0..%d)", t.name, host[:i], len(t.Info().Nodes)-1)
		}
	}
	var found *target
	for _, name := range set.names {
		if t := set.get(name); t.HasNode(req.Node) {
			if allows(name) {
				return t, req.Node, tunnel.StatusOK, ""
			}
			found = t
		}
	}
	if found != nil {
		return found, req.Node, tunnel.StatusOK, "" // the caller refuses it
	}
	return nil, "", tunnel.StatusUnknownNode, fmt.Sprintf("%q is not a node of any target on this gateway", req.Node)
}
