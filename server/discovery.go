package server

// Node discovery: redis-cluster targets learn their nodes, roles and slots
// from the cluster (CLUSTER SHARDS, or CLUSTER SLOTS before Redis 7), and
// memcached targets with discovery: elasticache from their configuration
// endpoint (config get cluster). Each such target has one loop that runs
// while the server serves: a round at start, then one every
// Target.Refresh, and one soon after a client asks (FrameRefresh), at
// most one per refreshGap. A round that fails keeps the last topology.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/cachetun/cachetun/control"
)

// refreshGap is the shortest time between two rounds that clients asked
// for, so that a burst of redirects costs the cluster one query.
const refreshGap = 500 * time.Millisecond

// A round that a client asked for, or that found a change, is followed by
// followUps more, followUpGap apart, until that many in a row change
// nothing: the cluster is changing (a client saw a MOVED that disagrees
// with the topology), and the node asked may not have caught up yet, or
// may be half way (a failover shows two masters for a moment).
const (
	followUps   = 5
	followUpGap = time.Second
)

// Node roles of memcached targets with discovery.
const (
	RoleConfig = "config" // a configuration endpoint
	RoleNode   = "node"   // a node the endpoint listed
)

// ErrNoDiscovery means no seed or known node answered a discovery query.
var ErrNoDiscovery = errors.New("no node answered the discovery query")

// errDiscoveryConnUsed: a discovery query makes one connection only.
var errDiscoveryConnUsed = errors.New("discovery connection already used")

// discovery runs the discovery loops while Run runs: one loop per current
// target that discovers. A reload starts the loops of new targets and
// stops those of retired ones (syncDiscovery).
type discovery struct {
	mu  sync.Mutex    // guards the following
	run *discoveryRun // nil before Run and after it
}

// discoveryRun is the loops of one stretch of serving.
type discoveryRun struct {
	ctx    context.Context
	cancel context.CancelFunc
	loops  map[*target]context.CancelFunc
	wg     sync.WaitGroup // every loop; Add only under discovery.mu while run is current
}

// startDiscovery starts a loop per target that discovers; Run calls it
// once, after listening. The loops end with ctx or stopDiscovery.
func (s *Server) startDiscovery(ctx context.Context) {
	d := &s.disc
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run != nil {
		return
	}
	run := &discoveryRun{loops: make(map[*target]context.CancelFunc)}
	run.ctx, run.cancel = context.WithCancel(context.WithoutCancel(ctx))
	d.run = run
	s.syncDiscoveryLocked()
}

// syncDiscovery makes the loops match the current targets.
func (s *Server) syncDiscovery() {
	s.disc.mu.Lock()
	defer s.disc.mu.Unlock()
	s.syncDiscoveryLocked()
}

func (s *Server) syncDiscoveryLocked() {
	run := s.disc.run
	if run == nil {
		return // Run starts them
	}
	set := s.targets()
	for t, cancel := range run.loops {
		if set.get(t.name) != t {
			cancel()
			delete(run.loops, t)
		}
	}
	for _, name := range set.names {
		t := set.get(name)
		if _, ok := run.loops[t]; ok || !t.discovers() {
			continue
		}
		lctx, cancel := context.WithCancel(run.ctx)
		run.loops[t] = cancel
		run.wg.Add(1)
		go func() {
			defer run.wg.Done()
			s.discoveryLoop(lctx, t)
		}()
	}
}

// stopDiscovery stops the loops and waits for them; Run calls it last.
func (s *Server) stopDiscovery() {
	d := &s.disc
	d.mu.Lock()
	run := d.run
	d.run = nil
	d.mu.Unlock()
	if run == nil {
		return
	}
	run.cancel()
	run.wg.Wait()
}

// discoveryLoop rediscovers t until ctx ends.
func (s *Server) discoveryLoop(ctx context.Context, t *target) {
	log := s.log.With(keyTarget, t.name)
	timeout := s.config().Limits.DialTimeout
	tm := time.NewTimer(0) // the first round at once
	defer tm.Stop()
	var (
		last    time.Time
		lastErr string
		follow  int // follow-up rounds still to do
		first   = true
	)
	for {
		asked := false
		select {
		case <-ctx.Done():
			return
		case <-tm.C:
		case <-t.refresh:
			asked = true
			if wait := refreshGap - time.Since(last); wait > 0 {
				tm.Reset(wait)
				select {
				case <-ctx.Done():
					return
				case <-tm.C:
				}
			}
		}
		last = time.Now()
		nodes, from, err := t.discover(ctx, timeout)
		var dials map[string]string
		if err == nil {
			t.forgetChecks(nodes)
			nodes, dials = s.vetNodes(ctx, t, nodes, log)
			if t.cfg.Type == TypeMemcached {
				nodes = t.withEndpoints(nodes)
			}
			if len(nodes) == 0 {
				err = fmt.Errorf("%w: every node that %s announced was refused (see the log lines before)", ErrNoDiscovery, from)
			}
		}
		if ctx.Err() != nil {
			t.markDiscovered()
			return
		}
		changed := false
		round := "ok"
		if err != nil {
			round = "error"
		}
		s.metrics.discoveryRounds.WithLabelValues(t.name, round).Inc()
		switch {
		case err != nil:
			if msg := err.Error(); msg != lastErr {
				log.Warn("discovery failed: keeping the last topology", keyErr, err)
				lastErr = msg
			}
		default:
			if lastErr != "" {
				log.Info("discovery works again", "from", from)
				lastErr = ""
			}
			if changed = t.updateNodes(nodes, dials); changed {
				log.Info("topology changed", "from", from, "nodes", len(nodes), "version", t.Info().Version, "layout", layout(nodes))
			}
		}
		// The first round replaces the configured seeds: a change that
		// says nothing about the cluster moving.
		if (changed && !first) || asked {
			follow = followUps
		}
		first = false
		t.markDiscovered() // after the update: the first Welcome has it
		next := t.cfg.refresh()
		if follow > 0 {
			follow--
			next = min(next, followUpGap)
		}
		tm.Reset(next)
	}
}

// layout summarises nodes for the log: "id addr role slots; ...", as
// CLUSTER NODES orders them (the id only where the cache has node ids).
func layout(nodes []control.NodeInfo) string {
	var b strings.Builder
	for i, n := range nodes {
		if i > 0 {
			b.WriteString("; ")
		}
		if n.ID != "" {
			b.WriteString(n.ID + " ")
		}
		b.WriteString(n.Addr)
		if n.Role != "" {
			b.WriteString(" " + n.Role)
		}
		if n.Slots != "" {
			b.WriteString(" " + n.Slots)
		}
	}
	return b.String()
}

// discover asks the seeds, then the other known nodes, one at a time,
// until one answers; it returns the nodes sorted by address, as announced
// (vetNodes checks them), and who answered.
func (t *target) discover(ctx context.Context, timeout time.Duration) ([]control.NodeInfo, string, error) {
	var errs []error
	for _, addr := range t.knownAddrs() {
		qctx, cancel := context.WithTimeout(ctx, timeout)
		var (
			nodes []control.NodeInfo
			err   error
		)
		switch t.cfg.Type {
		case TypeRedisCluster:
			nodes, err = t.queryRedisCluster(qctx, addr, timeout)
		case TypeMemcached:
			if !slices.Contains(t.cfg.Nodes, addr) {
				cancel()
				continue // only configuration endpoints answer
			}
			nodes, err = t.queryElastiCache(qctx, addr)
		default:
			cancel()
			return nil, "", fmt.Errorf("target type %q does not discover", t.cfg.Type)
		}
		cancel()
		if err == nil && len(nodes) > 0 {
			return nodes, addr, nil
		}
		if err == nil {
			err = errors.New("empty topology")
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, "", fmt.Errorf("%w: %w", ErrNoDiscovery, errors.Join(errs...))
}

// queryRedisCluster asks one node for the cluster's topology with CLUSTER
// SHARDS, or CLUSTER SLOTS when the node does not know SHARDS. The
// connection is made by t.dial, so it has the target's TLS and AUTH.
func (t *target) queryRedisCluster(ctx context.Context, addr string, timeout time.Duration) ([]control.NodeInfo, error) {
	// The connection is dialled here and handed to go-redis, whose pool
	// would otherwise retry a failed dial and probe on in a goroutine of
	// its own after Close.
	conn, err := t.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	var used atomic.Bool
	rc := redis.NewClient(&redis.Options{
		Addr: addr,
		Dialer: func(context.Context, string, string) (net.Conn, error) {
			if used.CompareAndSwap(false, true) {
				return conn, nil
			}
			return nil, errDiscoveryConnUsed
		},
		DialerRetries:            1,
		Protocol:                 2,
		DisableIdentity:          true,
		MaxRetries:               -1,
		PoolSize:                 1,
		DialTimeout:              timeout,
		ReadTimeout:              timeout,
		WriteTimeout:             timeout,
		ContextTimeoutEnabled:    true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	defer rc.Close()
	shards, err := rc.ClusterShards(ctx).Result()
	if err == nil {
		return t.nodesFromShards(shards), nil
	}
	var re redis.Error
	if !errors.As(err, &re) { // not an error reply: the node is unreachable
		return nil, fmt.Errorf("cluster shards: %w", err)
	}
	// CLUSTER SHARDS is Redis 7; older servers (Redis 6, ElastiCache
	// engine 6.x) answer it with an error and need CLUSTER SLOTS.
	//lint:ignore SA1019 the fallback for servers older than Redis 7, which lack CLUSTER SHARDS
	slots, err2 := rc.ClusterSlots(ctx).Result()
	if err2 != nil {
		// Error replies are the node's text: the log gets a sanitised
		// prefix of each.
		if errors.As(err2, &re) {
			err2 = fmt.Errorf("node answered %q", sanitizeReply(re.Error()))
		}
		return nil, fmt.Errorf("cluster shards: node answered %q; cluster slots: %w", sanitizeReply(err.Error()), err2)
	}
	return nodesFromSlots(slots), nil
}

// nodesFromShards turns a CLUSTER SHARDS reply into nodes. A node's
// address is the endpoint it announces (what MOVED names), or its IP when
// the endpoint is unknown; with upstream TLS its TLS port wins.
func (t *target) nodesFromShards(shards []redis.ClusterShard) []control.NodeInfo {
	var nodes []control.NodeInfo
	for _, sh := range shards {
		ranges := make([][2]int, 0, len(sh.Slots))
		for _, r := range sh.Slots {
			ranges = append(ranges, [2]int{int(r.Start), int(r.End)})
		}
		slots := formatSlots(ranges)
		for _, n := range sh.Nodes {
			port := n.Port
			if (t.upstreamTLS != nil && n.TLSPort != 0) || port == 0 {
				port = n.TLSPort
			}
			host := n.Endpoint
			if host == "" || host == "?" {
				host = n.IP
			}
			if host == "" || host == "?" || port <= 0 || port > 65535 {
				continue // the node has no address yet
			}
			ni := control.NodeInfo{Addr: net.JoinHostPort(host, strconv.FormatInt(port, 10)), ID: n.ID, Role: n.Role}
			if n.Role == "master" {
				ni.Slots = slots
			}
			nodes = append(nodes, ni)
		}
	}
	return sortNodes(nodes)
}

// nodesFromSlots turns a CLUSTER SLOTS reply into nodes: the first node of
// each range is its master. Masters without slots do not appear in it.
func nodesFromSlots(slots []redis.ClusterSlot) []control.NodeInfo {
	byAddr := make(map[string]*control.NodeInfo)
	ranges := make(map[string][][2]int)
	var order []string
	for _, s := range slots {
		for i, n := range s.Nodes {
			addr := n.Addr
			if host, port, err := net.SplitHostPort(addr); err == nil && (host == "" || host == "?") {
				if ip := n.NetworkingMetadata["ip"]; ip != "" {
					addr = net.JoinHostPort(ip, port)
				} else {
					continue
				}
			}
			ni := byAddr[addr]
			if ni == nil {
				ni = &control.NodeInfo{Addr: addr, ID: n.ID, Role: "replica"}
				byAddr[addr] = ni
				order = append(order, addr)
			}
			if i == 0 {
				ni.Role = "master"
				ranges[addr] = append(ranges[addr], [2]int{s.Start, s.End})
			}
		}
	}
	nodes := make([]control.NodeInfo, 0, len(order))
	for _, a := range order {
		ni := *byAddr[a]
		ni.Slots = formatSlots(ranges[a])
		nodes = append(nodes, ni)
	}
	return sortNodes(nodes)
}

// formatSlots writes slot ranges as "0-5460,10923", merging neighbours.
func formatSlots(ranges [][2]int) string {
	if len(ranges) == 0 {
		return ""
	}
	ranges = slices.Clone(ranges)
	slices.SortFunc(ranges, func(a, b [2]int) int { return a[0] - b[0] })
	merged := ranges[:1]
	for _, r := range ranges[1:] {
		if l := &merged[len(merged)-1]; r[0] <= l[1]+1 {
			l[1] = max(l[1], r[1])
			continue
		}
		merged = append(merged, r)
	}
	var b strings.Builder
	for i, r := range merged {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(r[0]))
		if r[1] != r[0] {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(r[1]))
		}
	}
	return b.String()
}

// sortNodes orders nodes by host, then numeric port, and drops duplicate
// addresses, so that a node keeps its place (and its client port) however
// the cache lists them.
func sortNodes(nodes []control.NodeInfo) []control.NodeInfo {
	slices.SortStableFunc(nodes, func(a, b control.NodeInfo) int { return compareAddr(a.Addr, b.Addr) })
	return slices.CompactFunc(nodes, func(a, b control.NodeInfo) bool { return a.Addr == b.Addr })
}

func compareAddr(a, b string) int {
	ha, pa, _ := net.SplitHostPort(a)
	hb, pb, _ := net.SplitHostPort(b)
	if c := strings.Compare(ha, hb); c != 0 {
		return c
	}
	na, _ := strconv.Atoi(pa)
	nb, _ := strconv.Atoi(pb)
	if na != nb {
		return na - nb
	}
	return strings.Compare(a, b)
}
