package testenv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// clusterTimeout bounds the wait for a cluster to converge (creation,
	// failover, slot migration). Longer than readyTimeout: gossip on a
	// loaded 2-core machine takes seconds.
	clusterTimeout = 30 * time.Second
	// manualFailoverRetry is when Failover asks again: a manual failover
	// that did not happen within Redis' 5 s window is abandoned by Redis.
	manualFailoverRetry = 6 * time.Second
	// migrateBatch is how many keys one MIGRATE moves.
	migrateBatch = 100
)

// Cluster is a Redis Cluster of redis-server processes on 127.0.0.1.
//
// Nodes lists every node in start order; which of them are masters changes
// with Failover, so ask Masters, Replicas or MasterForSlot. Every method
// waits for all running nodes to agree on the cluster layout before it
// answers or returns.
type Cluster struct {
	Nodes []*Redis

	password string
	cli      string
}

// StartCluster starts masters*(1+replicasPerMaster) cluster-enabled
// redis-server processes, joins them with redis-cli --cluster create and
// waits until every node reports cluster_state:ok, all 16384 slots are
// served, and every replica is attached to its master. masters must be at
// least 3. args are passed to every node; a --requirepass password is also
// used as --masterauth and by redis-cli. Each node's cluster bus listens on
// its own free port (--cluster-port).
func StartCluster(t testing.TB, masters, replicasPerMaster int, args ...string) *Cluster {
	t.Helper()
	if masters < 3 || replicasPerMaster < 0 {
		t.Fatalf("testenv: StartCluster(%d, %d): need at least 3 masters and no negative replica count", masters, replicasPerMaster)
	}
	c := &Cluster{
		password: lastFlagValue(args, "--requirepass"),
		cli:      RequireBinary(t, "redis-cli"),
	}
	n := masters * (1 + replicasPerMaster)
	for range n {
		c.Nodes = append(c.Nodes, startRedis(t, redisConfig{extra: args, cluster: true}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	for _, r := range c.Nodes {
		id, err := r.str(ctx, "CLUSTER", "MYID")
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		r.id = id
	}

	create := append([]string{"--cluster", "create"}, c.Addrs()...)
	create = append(create, "--cluster-replicas", strconv.Itoa(replicasPerMaster), "--cluster-yes")
	if out, err := runCLI(c.cli, c.password, create); err != nil {
		t.Fatalf("testenv: create cluster: %v\n%s\n%s", err, out, c.logTails())
	}
	c.waitConverged(t, ctx, "cluster creation", func(v *clusterView) error {
		ms := v.masters()
		if len(ms) != masters {
			return fmt.Errorf("%d masters, want %d", len(ms), masters)
		}
		for _, m := range ms {
			if got := len(v.replicasOf(m.id)); got != replicasPerMaster {
				return fmt.Errorf("master %s has %d replicas, want %d", m.addr, got, replicasPerMaster)
			}
		}
		return nil
	})
	return c
}

// Addrs returns the addresses of all nodes, in start order.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, r := range c.Nodes {
		addrs[i] = r.Addr
	}
	return addrs
}

// ClusterClient returns a go-redis cluster client seeded with every node,
// closed on cleanup.
func (c *Cluster) ClusterClient(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), Password: c.password})
	t.Cleanup(func() { cc.Close() })
	return cc
}

// ClusterID returns the node's cluster node id, or "" when r is not a
// cluster node.
func (r *Redis) ClusterID() string { return r.id }

// MasterForSlot returns the master serving slot, once all running nodes
// agree on it.
func (c *Cluster) MasterForSlot(t testing.TB, slot int) *Redis {
	t.Helper()
	if slot < 0 || slot >= NumSlots {
		t.Fatalf("testenv: slot %d out of range", slot)
	}
	v := c.agreedView(t)
	owner := v.ownerOf(slot)
	if owner == nil {
		t.Fatalf("testenv: no master serves slot %d", slot)
	}
	return c.node(t, owner.id)
}

// Masters returns the current masters, in start order.
func (c *Cluster) Masters(t testing.TB) []*Redis {
	t.Helper()
	v := c.agreedView(t)
	var ms []*Redis
	for _, r := range c.Nodes {
		if n := v.byID[r.id]; n != nil && n.master {
			ms = append(ms, r)
		}
	}
	return ms
}

// Replicas returns the current replicas of master, in start order.
func (c *Cluster) Replicas(t testing.TB, master *Redis) []*Redis {
	t.Helper()
	v := c.agreedView(t)
	var rs []*Redis
	for _, r := range c.Nodes {
		if n := v.byID[r.id]; n != nil && !n.master && n.masterID == master.id {
			rs = append(rs, r)
		}
	}
	return rs
}

// WaitHealthy waits until every running node reports cluster_state:ok with
// all slots served, all running nodes agree on the layout, and every
// running replica's link to its master is up. Call it after restarting
// nodes.
func (c *Cluster) WaitHealthy(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	c.waitConverged(t, ctx, "a healthy cluster", nil)
}

// Failover promotes replica with CLUSTER FAILOVER (a coordinated manual
// failover, no data loss) and waits until every running node sees it as a
// master serving its former master's slots, the former master (if
// running) has become its replica with the link up, and the cluster is
// healthy.
func (c *Cluster) Failover(t testing.TB, replica *Redis) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	self, err := c.viewOf(ctx, replica)
	if err != nil {
		t.Fatalf("testenv: failover: %v", err)
	}
	me := self.byID[replica.id]
	if me.master {
		t.Fatalf("testenv: failover: %s is not a replica", replica.Addr)
	}
	oldMaster := c.node(t, me.masterID)

	sent := time.Now()
	if _, err := replica.do(ctx, "CLUSTER", "FAILOVER"); err != nil {
		t.Fatalf("testenv: failover: %v", err)
	}
	err = poll(ctx, nil, func(pctx context.Context) error {
		v, err := c.viewOf(pctx, replica)
		if err != nil {
			return err
		}
		if !v.byID[replica.id].master {
			if time.Since(sent) > manualFailoverRetry {
				sent = time.Now()
				if _, err := replica.do(pctx, "CLUSTER", "FAILOVER"); err != nil {
					return err
				}
			}
			return fmt.Errorf("%s is still a replica", replica.Addr)
		}
		return nil
	}, nil)
	if err != nil {
		t.Fatalf("testenv: failover to %s: %v\n%s", replica.Addr, err, c.logTails())
	}
	c.waitConverged(t, ctx, "failover to "+replica.Addr, func(v *clusterView) error {
		n := v.byID[replica.id]
		if !n.master || len(n.slots) == 0 {
			return fmt.Errorf("%s is not a master serving slots", replica.Addr)
		}
		if oldMaster.Running() && v.byID[oldMaster.id].masterID != replica.id {
			return fmt.Errorf("former master %s is not a replica of %s", oldMaster.Addr, replica.Addr)
		}
		return nil
	})
}

// MigrateSlot moves slot and all its keys from one master to another:
// BeginMigrateSlot then FinishMigrateSlot.
func (c *Cluster) MigrateSlot(t testing.TB, slot int, from, to *Redis) {
	t.Helper()
	c.BeginMigrateSlot(t, slot, from, to)
	c.FinishMigrateSlot(t, slot, from, to)
}

// BeginMigrateSlot starts moving slot from one master to another: to is
// set IMPORTING and from MIGRATING, and no key moves yet. Until
// FinishMigrateSlot, from answers -ASK for keys of the slot it no longer
// has; use MoveSlotKeys to move some of them.
func (c *Cluster) BeginMigrateSlot(t testing.TB, slot int, from, to *Redis) {
	t.Helper()
	if from == to {
		t.Fatalf("testenv: migrate slot %d: source and target are both %s", slot, from.Addr)
	}
	if owner := c.MasterForSlot(t, slot); owner != from {
		t.Fatalf("testenv: migrate slot %d: served by %s, not by %s", slot, owner.Addr, from.Addr)
	}
	if !slices.Contains(c.Masters(t), to) {
		t.Fatalf("testenv: migrate slot %d: target %s is not a master", slot, to.Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	s := strconv.Itoa(slot)
	if _, err := to.do(ctx, "CLUSTER", "SETSLOT", s, "IMPORTING", from.id); err != nil {
		t.Fatalf("testenv: migrate slot %d: %v", slot, err)
	}
	if _, err := from.do(ctx, "CLUSTER", "SETSLOT", s, "MIGRATING", to.id); err != nil {
		t.Fatalf("testenv: migrate slot %d: %v", slot, err)
	}
}

// MoveSlotKeys moves up to max keys of slot (all of them when max <= 0)
// from one master to another with MIGRATE and returns how many it moved.
// The slot must be migrating (BeginMigrateSlot). MIGRATE runs on the
// source, whose connection to the target (cached by Redis for 10 s) counts
// as a client of the target.
func (c *Cluster) MoveSlotKeys(t testing.TB, slot int, from, to *Redis, max int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	moved := 0
	for max <= 0 || moved < max {
		batch := migrateBatch
		if max > 0 {
			batch = min(batch, max-moved)
		}
		v, err := from.do(ctx, "CLUSTER", "GETKEYSINSLOT", strconv.Itoa(slot), strconv.Itoa(batch))
		if err != nil {
			t.Fatalf("testenv: move keys of slot %d: %v", slot, err)
		}
		keys, _ := v.([]any)
		if len(keys) == 0 {
			break
		}
		args := []string{"MIGRATE", "127.0.0.1", strconv.Itoa(to.Port), "", "0", "5000"}
		if c.password != "" {
			args = append(args, "AUTH", c.password)
		}
		args = append(args, "KEYS")
		for _, k := range keys {
			args = append(args, k.(string))
		}
		if _, err := from.do(ctx, args...); err != nil {
			t.Fatalf("testenv: move keys of slot %d from %s to %s: %v", slot, from.Addr, to.Addr, err)
		}
		moved += len(keys)
	}
	return moved
}

// FinishMigrateSlot moves the remaining keys of slot, assigns the slot to
// to with CLUSTER SETSLOT NODE on the target, the source and every other
// master, and waits until every running node agrees that to serves it.
func (c *Cluster) FinishMigrateSlot(t testing.TB, slot int, from, to *Redis) {
	t.Helper()
	c.MoveSlotKeys(t, slot, from, to, 0)
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	s := strconv.Itoa(slot)
	order := []*Redis{to, from}
	for _, m := range c.Masters(t) {
		if m != to && m != from && m.Running() {
			order = append(order, m)
		}
	}
	for _, m := range order {
		if _, err := m.do(ctx, "CLUSTER", "SETSLOT", s, "NODE", to.id); err != nil {
			t.Fatalf("testenv: migrate slot %d: %v", slot, err)
		}
	}
	c.waitConverged(t, ctx, fmt.Sprintf("slot %d on %s", slot, to.Addr), func(v *clusterView) error {
		if o := v.ownerOf(slot); o == nil || o.id != to.id {
			return fmt.Errorf("slot %d not yet served by %s", slot, to.Addr)
		}
		return nil
	})
}

// node returns the node with cluster id.
func (c *Cluster) node(t testing.TB, id string) *Redis {
	t.Helper()
	for _, r := range c.Nodes {
		if r.id == id {
			return r
		}
	}
	t.Fatalf("testenv: no node with cluster id %s", id)
	return nil
}

// running returns the nodes whose process is running.
func (c *Cluster) running() []*Redis {
	var rs []*Redis
	for _, r := range c.Nodes {
		if r.Running() {
			rs = append(rs, r)
		}
	}
	return rs
}

// viewOf returns r's CLUSTER NODES.
func (c *Cluster) viewOf(ctx context.Context, r *Redis) (*clusterView, error) {
	s, err := r.str(ctx, "CLUSTER", "NODES")
	if err != nil {
		return nil, err
	}
	v, err := parseClusterNodes(s)
	if err != nil {
		return nil, fmt.Errorf("CLUSTER NODES of %s: %w", r.Addr, err)
	}
	return v, nil
}

// agreedView waits until all running nodes agree on the layout and returns
// it.
func (c *Cluster) agreedView(t testing.TB) *clusterView {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	var agreed *clusterView
	err := poll(ctx, nil, func(ctx context.Context) error {
		var err error
		agreed, err = c.agree(ctx)
		return err
	}, nil)
	if err != nil {
		t.Fatalf("testenv: cluster nodes disagree on the layout: %v\n%s", err, c.logTails())
	}
	return agreed
}

// agree returns the common view of all running nodes, or an error naming
// the first node that disagrees.
func (c *Cluster) agree(ctx context.Context) (*clusterView, error) {
	var (
		first    *clusterView
		firstSig string
		from     string
	)
	for _, r := range c.running() {
		v, err := c.viewOf(ctx, r)
		if err != nil {
			return nil, err
		}
		sig := v.signature()
		if first == nil {
			first, firstSig, from = v, sig, r.Addr
			continue
		}
		if sig != firstSig {
			return nil, fmt.Errorf("%s sees\n%s\nbut %s sees\n%s", from, firstSig, r.Addr, sig)
		}
	}
	if first == nil {
		return nil, errors.New("no node is running")
	}
	return first, nil
}

// waitConverged waits until the cluster is healthy (see WaitHealthy) and
// extra, if not nil, accepts the agreed view.
func (c *Cluster) waitConverged(t testing.TB, ctx context.Context, what string, extra func(*clusterView) error) {
	t.Helper()
	err := poll(ctx, nil, func(ctx context.Context) error {
		v, err := c.healthy(ctx)
		if err != nil {
			return err
		}
		if extra != nil {
			return extra(v)
		}
		return nil
	}, nil)
	if err != nil {
		t.Fatalf("testenv: waiting for %s: %v\n%s", what, err, c.logTails())
	}
}

// healthy checks the conditions WaitHealthy waits for and returns the
// agreed view.
func (c *Cluster) healthy(ctx context.Context) (*clusterView, error) {
	v, err := c.agree(ctx)
	if err != nil {
		return nil, err
	}
	up := make(map[string]bool)
	for _, r := range c.running() {
		up[r.id] = true
	}
	for _, r := range c.running() {
		info, err := r.str(ctx, "CLUSTER", "INFO")
		if err != nil {
			return nil, err
		}
		if st, _ := infoField(info, "cluster_state"); st != "ok" {
			return nil, fmt.Errorf("%s: cluster_state:%s", r.Addr, st)
		}
		for _, f := range []string{"cluster_slots_assigned", "cluster_slots_ok"} {
			if n, err := infoInt(info, f); err != nil || n != NumSlots {
				return nil, fmt.Errorf("%s: %s:%d (%v)", r.Addr, f, n, err)
			}
		}
		if n, err := infoInt(info, "cluster_known_nodes"); err != nil || n != int64(len(c.Nodes)) {
			return nil, fmt.Errorf("%s: cluster_known_nodes:%d, want %d (%v)", r.Addr, n, len(c.Nodes), err)
		}
		own, err := c.viewOf(ctx, r)
		if err != nil {
			return nil, err
		}
		for _, n := range own.nodes {
			if !up[n.id] {
				continue
			}
			for _, bad := range []string{"fail", "fail?", "handshake", "noaddr"} {
				if n.flags[bad] {
					return nil, fmt.Errorf("%s flags %s as %s", r.Addr, n.addr, bad)
				}
			}
			if !n.flags["myself"] && n.linkState != "connected" {
				return nil, fmt.Errorf("%s: link to %s is %s", r.Addr, n.addr, n.linkState)
			}
		}
		repl, err := r.str(ctx, "INFO", "replication")
		if err != nil {
			return nil, err
		}
		me := v.byID[r.id]
		if me == nil {
			return nil, fmt.Errorf("%s (%s) is not in the cluster", r.Addr, r.id)
		}
		if me.master {
			want := 0
			for _, rep := range v.replicasOf(r.id) {
				if up[rep.id] {
					want++
				}
			}
			if n, err := infoInt(repl, "connected_slaves"); err != nil || n != int64(want) {
				return nil, fmt.Errorf("%s: connected_slaves:%d, want %d (%v)", r.Addr, n, want, err)
			}
		} else if up[me.masterID] {
			if st, _ := infoField(repl, "master_link_status"); st != "up" {
				return nil, fmt.Errorf("%s: master_link_status:%s", r.Addr, st)
			}
		}
	}
	return v, nil
}

// logTails returns the log tails of all nodes, for failure messages.
func (c *Cluster) logTails() string {
	var b strings.Builder
	for _, r := range c.Nodes {
		b.WriteString(r.LogTail())
	}
	return b.String()
}

// clusterView is one node's CLUSTER NODES.
type clusterView struct {
	nodes []*clusterNode
	byID  map[string]*clusterNode
}

// clusterNode is one line of CLUSTER NODES.
type clusterNode struct {
	id        string
	addr      string // host:port
	flags     map[string]bool
	master    bool
	masterID  string // "" for masters
	linkState string
	slots     [][2]int // inclusive ranges
}

// parseClusterNodes parses CLUSTER NODES output:
//
//	<id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent> <pong-recv> <config-epoch> <link-state> <slot>...
//
// where a slot is "N", "N-M", or an open migration "[N->-id]" / "[N-<-id]"
// (ignored here: it appears only on the node's own line).
func parseClusterNodes(s string) (*clusterView, error) {
	v := &clusterView{byID: make(map[string]*clusterNode)}
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 8 {
			return nil, fmt.Errorf("malformed line %q", line)
		}
		addr, _, _ := strings.Cut(f[1], ",")
		addr, _, _ = strings.Cut(addr, "@")
		n := &clusterNode{id: f[0], addr: addr, flags: make(map[string]bool), linkState: f[7]}
		for fl := range strings.SplitSeq(f[2], ",") {
			n.flags[fl] = true
		}
		n.master = n.flags["master"]
		if f[3] != "-" {
			n.masterID = f[3]
		}
		for _, sl := range f[8:] {
			if strings.HasPrefix(sl, "[") {
				continue
			}
			lo, hi, isRange := strings.Cut(sl, "-")
			a, err := strconv.Atoi(lo)
			if err != nil {
				return nil, fmt.Errorf("malformed slot %q", sl)
			}
			b := a
			if isRange {
				if b, err = strconv.Atoi(hi); err != nil {
					return nil, fmt.Errorf("malformed slot %q", sl)
				}
			}
			n.slots = append(n.slots, [2]int{a, b})
		}
		v.nodes = append(v.nodes, n)
		v.byID[n.id] = n
	}
	slices.SortFunc(v.nodes, func(a, b *clusterNode) int { return strings.Compare(a.id, b.id) })
	return v, nil
}

// signature is the part of the view all nodes must agree on: roles,
// replication and slot ownership.
func (v *clusterView) signature() string {
	var b strings.Builder
	for _, n := range v.nodes {
		role := "replica-of-" + n.masterID
		if n.master {
			role = "master"
		}
		fmt.Fprintf(&b, "%s %s %s %v\n", n.id, n.addr, role, n.slots)
	}
	return b.String()
}

func (v *clusterView) masters() []*clusterNode {
	var ms []*clusterNode
	for _, n := range v.nodes {
		if n.master {
			ms = append(ms, n)
		}
	}
	return ms
}

func (v *clusterView) replicasOf(id string) []*clusterNode {
	var rs []*clusterNode
	for _, n := range v.nodes {
		if !n.master && n.masterID == id {
			rs = append(rs, n)
		}
	}
	return rs
}

// ownerOf returns the master serving slot, or nil.
func (v *clusterView) ownerOf(slot int) *clusterNode {
	for _, n := range v.nodes {
		if !n.master {
			continue
		}
		for _, r := range n.slots {
			if r[0] <= slot && slot <= r[1] {
				return n
			}
		}
	}
	return nil
}
