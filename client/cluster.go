package client

// The address tables that cache-protocol rewriting uses (the rewriters
// themselves are client/resp and client/memcache; proxy.go picks one per
// connection). On redis-cluster targets a resp.Conn replaces node
// addresses in redirects and CLUSTER replies by local listener addresses;
// on memcached targets with auto discovery, connections to a configuration
// endpoint get their "config get cluster" replies rewritten the same way. A node
// the client has no port for yet makes it ask the gateway for a refresh
// and wait briefly for the topology push that opens the port, so that the
// address the application sees already works.

import (
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachetun/cachetun/client/resp"
	"github.com/cachetun/cachetun/control"
)

// Target types and roles the client treats specially (the gateway's
// names).
const (
	typeRedisCluster = "redis-cluster"
	typeMemcached    = "memcached"
	roleConfig       = "config"
	numSlots         = 16384
)

// Timing of refresh requests and waits for unknown nodes.
const (
	// refreshGap is the shortest time between two refresh requests.
	refreshGap = 500 * time.Millisecond
	// unknownWait bounds the wait for a node the client has no port for.
	unknownWait = time.Second
	// unknownCooldown is how long after a wait in vain unknown nodes are
	// passed through at once.
	unknownCooldown = 2 * time.Second
)

// clusterState is the client's rewriting state; its zero value is ready.
type clusterState struct {
	table atomic.Pointer[addrTable]

	mu        sync.Mutex    // guards the following
	changed   chan struct{} // closed and replaced when the table changes
	waitUntil time.Time     // end of the current wait for unknown nodes

	refreshPending atomic.Bool
	refreshRunning atomic.Bool
	refreshes      atomic.Int64 // refresh requests made
	lastRefresh    time.Time    // owned by the refresh goroutine
}

// addrTable maps upstream node addresses to local listener addresses.
type addrTable struct {
	typ   string
	local map[string]string // upstream "host:port" -> local "ip:port"
	role  map[string]string // upstream -> role
	// owner[slot] is 1 + the index in addrs of the slot's master, 0 when
	// unknown.
	owner   []uint16
	addrs   []string // masters with slots
	version int64
}

// masters lists the masters with their slots, for the log.
func (t *addrTable) masters() string {
	var b strings.Builder
	for i, a := range t.addrs {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(a)
	}
	return b.String()
}

// publishTopologyLocked makes the current listeners and roles the table
// that rewriting uses, and wakes connections waiting for a node. c.mu is
// held.
func (c *targetView) publishTopologyLocked() {
	t := &addrTable{
		typ:   c.info.Type,
		local: make(map[string]string, len(c.listeners)),
		role:  make(map[string]string, len(c.info.Nodes)),
	}
	for a, l := range c.listeners {
		t.local[a] = l.ln.Addr().String()
	}
	if t.typ == typeRedisCluster {
		t.owner = make([]uint16, numSlots)
	}
	for _, n := range c.info.Nodes {
		t.role[n.Addr] = n.Role
		if t.owner == nil || n.Slots == "" || len(t.addrs) >= 1<<16-1 {
			continue
		}
		t.addrs = append(t.addrs, n.Addr)
		forEachSlot(n.Slots, func(s int) { t.owner[s] = uint16(len(t.addrs)) })
	}
	cs := &c.cluster
	if old := cs.table.Load(); old != nil && old.version != c.info.Version {
		c.log.Info("topology update from the gateway", "target", c.name, "version", c.info.Version, "nodes", len(c.info.Nodes), "masters", t.masters())
	}
	t.version = c.info.Version
	cs.table.Store(t)
	cs.mu.Lock()
	if cs.changed != nil {
		close(cs.changed)
	}
	cs.changed = make(chan struct{})
	cs.mu.Unlock()
}

// forEachSlot calls f for every slot of "0-5460,10923".
func forEachSlot(ranges string, f func(int)) {
	for _, r := range strings.Split(ranges, ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				continue
			}
		}
		for s := max(a, 0); s <= min(b, numSlots-1); s++ {
			f(s)
		}
	}
}

// Topology returns the first target's topology as the gateway last pushed
// it.
func (c *Client) Topology() control.TargetInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.views) == 0 {
		return control.TargetInfo{}
	}
	return c.views[0].infoLocked()
}

// Topologies returns every target's topology, in the order of the table.
func (c *Client) Topologies() []control.TargetInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]control.TargetInfo, 0, len(c.views))
	for _, v := range c.views {
		out = append(out, v.infoLocked())
	}
	return out
}

func (v *targetView) infoLocked() control.TargetInfo {
	info := v.info
	info.Nodes = append([]control.NodeInfo(nil), info.Nodes...)
	return info
}

// splitUpstream splits a node address as a cache prints it: the host may
// be an IPv6 address without brackets, or empty.
func splitUpstream(up string) (host, port string, ok bool) {
	i := strings.LastIndexByte(up, ':')
	if i < 0 {
		return "", "", false
	}
	host, port = up[:i], up[i+1:]
	if len(host) >= 2 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	return host, port, port != ""
}

// lookup finds the local address of an upstream node.
func (t *addrTable) lookup(host, port string) (string, bool) {
	if t == nil {
		return "", false
	}
	l, ok := t.local[net.JoinHostPort(host, port)]
	return l, ok
}

// localFor maps an upstream node address to its local address, waiting
// briefly for the gateway to announce a node the client does not know.
func (c *targetView) localFor(host, port string) (string, bool) {
	cs := &c.cluster
	if l, ok := cs.table.Load().lookup(host, port); ok {
		return l, true
	}
	cs.mu.Lock()
	now := time.Now()
	if !now.Before(cs.waitUntil) {
		if now.Before(cs.waitUntil.Add(unknownCooldown)) {
			cs.mu.Unlock()
			return "", false // waited in vain a moment ago
		}
		cs.waitUntil = now.Add(unknownWait)
		c.log.Info("the cache names a node without a local port: asking the gateway to refresh", "node", net.JoinHostPort(host, port))
		c.requestRefresh()
	}
	until := cs.waitUntil
	cs.mu.Unlock()
	tm := time.NewTimer(time.Until(until))
	defer tm.Stop()
	for {
		cs.mu.Lock()
		ch := cs.changed
		cs.mu.Unlock()
		if l, ok := cs.table.Load().lookup(host, port); ok {
			return l, true
		}
		select {
		case <-ch:
		case <-tm.C:
			c.log.Warn("the gateway announced no such node: the address is passed on unchanged", "node", net.JoinHostPort(host, port))
			return "", false
		case <-c.runCtx.Done():
			return "", false
		}
	}
}

// requestRefresh asks the gateway to rediscover the topology, at most once
// per refreshGap; requests in between are merged into the next one. It
// never blocks.
func (c *targetView) requestRefresh() {
	cs := &c.cluster
	cs.refreshPending.Store(true)
	if !cs.refreshRunning.CompareAndSwap(false, true) {
		return
	}
	c.wg.Add(1) // callers run inside a local connection, so wg is above 0
	go func() {
		defer c.wg.Done()
		for {
			for cs.refreshPending.Swap(false) {
				if wait := refreshGap - time.Since(cs.lastRefresh); wait > 0 {
					select {
					case <-time.After(wait):
					case <-c.runCtx.Done():
						cs.refreshRunning.Store(false)
						return
					}
				}
				c.sendRefresh()
				cs.lastRefresh = time.Now()
				cs.refreshes.Add(1)
			}
			cs.refreshRunning.Store(false)
			if !cs.refreshPending.Load() || !cs.refreshRunning.CompareAndSwap(false, true) {
				return
			}
		}
	}()
}

// sendRefresh writes a FrameRefresh on the current session's control
// stream; without a session there is nothing to do (the next Welcome
// brings the topology anyway).
func (c *targetView) sendRefresh() {
	c.mu.Lock()
	cn := c.cur
	c.mu.Unlock()
	if cn == nil || cn.ctrl == nil {
		return
	}
	cn.ctrlMu.Lock()
	_ = cn.ctrl.SetWriteDeadline(time.Now().Add(5 * time.Second))
	// A gateway before multi-target sessions ignores the payload and
	// refreshes its only target.
	err := control.WriteJSON(cn.ctrl, control.FrameRefresh, &control.Refresh{Target: c.name})
	_ = cn.ctrl.SetWriteDeadline(time.Time{})
	cn.ctrlMu.Unlock()
	if err != nil {
		c.log.Debug("send refresh request", "err", err)
	}
}

// redisMap returns the address map of one connection to node: a plain
// lookup (an empty host means node itself). Waiting for unknown nodes
// happens in onRedirect, which the rewriter calls before it maps a
// redirect: a CLUSTER reply names each node under several hosts, and a
// miss on one of them must not stall the reply.
func (c *targetView) redisMap(node string) resp.AddrMap {
	return func(up string) (string, bool) {
		host, port, ok := c.upstreamOf(node, up)
		if !ok {
			return "", false
		}
		return c.cluster.table.Load().lookup(host, port)
	}
}

// upstreamOf splits up, filling an empty host from node when the ports
// agree.
func (c *targetView) upstreamOf(node, up string) (host, port string, ok bool) {
	host, port, ok = splitUpstream(up)
	if !ok {
		return "", "", false
	}
	if host == "" {
		nh, np, err := net.SplitHostPort(node)
		if err != nil || np != port {
			return "", "", false
		}
		host = nh
	}
	return host, port, true
}

// onRedirect returns the callback of one connection to node. A redirect
// to a node without a local port waits briefly for the gateway to announce
// it; a MOVED that disagrees with the slot owners the gateway announced
// asks for a refresh (the cluster changed under us); a node of a CLUSTER
// reply without a local port asks for a refresh. Redirects that only route
// a client that asked the wrong node, and ASK (a migration in progress),
// change nothing.
func (c *targetView) onRedirect(node string) func(kind string, slot int, up string) {
	return func(kind string, slot int, up string) {
		host, port, ok := c.upstreamOf(node, up)
		if !ok {
			return
		}
		t := c.cluster.table.Load()
		if t == nil {
			return
		}
		if kind == resp.KindUnknown {
			c.requestRefresh()
			return
		}
		if _, known := t.lookup(host, port); !known {
			c.localFor(host, port)
			return
		}
		if kind != resp.KindMoved || slot < 0 || slot >= numSlots || t.owner == nil {
			return
		}
		if i := t.owner[slot]; i > 0 && t.addrs[i-1] == net.JoinHostPort(host, port) {
			return
		}
		c.requestRefresh()
	}
}

// memcachedMap maps one "host|ip|port" entry of a config get cluster
// reply to the local listener of that node.
func (c *targetView) memcachedMap(host, ip, port string) (string, bool) {
	if ip != "" {
		if l, ok := c.cluster.table.Load().lookup(ip, port); ok {
			return l, true
		}
	}
	if host != "" {
		if l, ok := c.cluster.table.Load().lookup(host, port); ok {
			return l, true
		}
	}
	if ip != "" {
		return c.localFor(ip, port)
	}
	return c.localFor(host, port)
}
