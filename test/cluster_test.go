package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// clusterEnv is one 6-node Redis Cluster (3 masters, 3 replicas) that
// requires a password, behind a gateway that injects it: the laptop side
// never has it. Target "prod" is the cluster; target "node0" is the first
// master as a plain redis target, for comparisons.
type clusterEnv struct {
	Cluster  *testenv.Cluster
	Password string
	Gateway  *gateway
	Key      key
	Node0    *testenv.Redis
}

func startClusterEnv(t testing.TB) *clusterEnv {
	t.Helper()
	pw := randomSecret(t)
	cl := testenv.StartCluster(t, 3, 1, "--requirepass", pw)
	pwFile := filepath.Join(t.TempDir(), "redis-password")
	if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	node0 := cl.Masters(t)[0]
	k := newKey(t, "dev@laptop")
	auth := &server.UpstreamAuth{PasswordFile: pwFile}
	g := startGateway(t, map[string]*server.Target{
		// Refresh is longer than the test: every topology change the
		// tests wait for must reach the client because a client saw a
		// redirect and asked, not because a timer fired.
		"prod":  {Type: server.TypeRedisCluster, Nodes: []string{cl.Nodes[0].Addr}, Auth: auth, Refresh: time.Hour, Networks: loopbackNetworks},
		"node0": {Type: server.TypeRedis, Nodes: []string{node0.Addr}, Auth: auth},
	}, []string{k.Line})
	return &clusterEnv{Cluster: cl, Password: pw, Gateway: g, Key: k, Node0: node0}
}

// loopbackNetworks admits the test caches, which all run on 127.0.0.1: a
// target admits loopback nodes only when its networks name them.
var loopbackNetworks = []string{"127.0.0.1/32"}

func randomSecret(t testing.TB) string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "pw-" + hex.EncodeToString(b[:])
}

// localSet returns the client's local addresses as a set.
func localSet(c *connect) map[string]bool {
	m := make(map[string]bool)
	for _, l := range c.Client.LocalAddrs() {
		m[l] = true
	}
	return m
}

// localAddrs returns the client's local addresses, sorted.
func localAddrs(c *connect) []string {
	var out []string
	for l := range localSet(c) {
		out = append(out, l)
	}
	slices.Sort(out)
	return out
}

var addrRE = regexp.MustCompile(`\b127\.0\.0\.1:(\d+)`)

// assertOnlyLocal fails when text names a 127.0.0.1 address that is not a
// local listener of c: the real cluster also runs on 127.0.0.1 here, so a
// missed rewrite would still work, and only this check catches it.
func assertOnlyLocal(t testing.TB, c *connect, what, text string) {
	t.Helper()
	local := localSet(c)
	n := 0
	for _, m := range addrRE.FindAllString(text, -1) {
		if !local[m] {
			t.Fatalf("%s names %s, which is not a local port (local: %v):\n%s", what, m, localAddrs(c), text)
		}
		n++
	}
	if n == 0 {
		t.Fatalf("%s names no address at all:\n%s", what, text)
	}
}

// redisCLIStdin runs redis-cli with args, feeding it commands on stdin.
func redisCLIStdin(t testing.TB, addr string, stdin string, args ...string) string {
	t.Helper()
	cli := testenv.RequireBinary(t, "redis-cli")
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, cli, append([]string{"-h", host, "-p", port}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("redis-cli %v: %v: %s", args, err, stderr.String())
	}
	return string(out)
}

// clusterKeys returns n keys spread over all 16384 slots.
func clusterKeys(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s:%d", prefix, i)
	}
	return keys
}

// TestCluster runs every Redis Cluster scenario against one real 6-node
// cluster, on every transport.
func TestCluster(t *testing.T) {
	env := startClusterEnv(t)
	forEachTransport(t, func(t *testing.T, transport string) {
		c := mustConnect(t, env.Gateway, transport, "prod", env.Key)
		t.Run("Topology", func(t *testing.T) { testClusterTopology(t, env, c) })
		t.Run("RedisCLI", func(t *testing.T) { testClusterRedisCLI(t, env, c, transport) })
		t.Run("GoRedis", func(t *testing.T) { testClusterGoRedis(t, env, c, transport) })
		t.Run("RedisBenchmark", func(t *testing.T) { testClusterRedisBenchmark(t, c) })
		t.Run("FailoverAndMigration", func(t *testing.T) { testClusterChanges(t, env, c, transport) })
		t.Cleanup(func() { assertNoSecret(t, c, env.Password) })
	})
	if log := env.Gateway.Log.String(); strings.Contains(log, env.Password) {
		t.Fatal("the gateway's log holds the cluster password")
	}
}

// assertNoSecret fails when the client's log, output or topology holds
// secret.
func assertNoSecret(t testing.TB, c *connect, secret string) {
	t.Helper()
	topo, _ := json.Marshal(c.Client.Topology())
	for what, text := range map[string]string{"log": c.Log.String(), "output": c.Out.String(), "topology": string(topo)} {
		if strings.Contains(text, secret) {
			t.Errorf("the client's %s holds the upstream password", what)
		}
	}
}

// testClusterTopology: the client opened one port per node, knows every
// node's role and slots, and the CLUSTER replies name only local ports.
func testClusterTopology(t *testing.T, env *clusterEnv, c *connect) {
	info := c.Client.Topology()
	if len(info.Nodes) != 6 {
		t.Fatalf("topology has %d nodes, want 6: %+v", len(info.Nodes), info.Nodes)
	}
	roles := map[string]int{}
	for _, n := range info.Nodes {
		roles[n.Role]++
		if n.Role == "master" && n.Slots == "" {
			t.Errorf("master %s has no slots", n.Addr)
		}
		if n.ID == "" {
			t.Errorf("node %s has no id", n.Addr)
		}
	}
	if roles["master"] != 3 || roles["replica"] != 3 {
		t.Fatalf("roles %v, want 3 masters and 3 replicas", roles)
	}
	if got := len(c.Client.LocalAddrs()); got != 6 {
		t.Fatalf("%d local ports, want 6", got)
	}
	out := c.Out.String()
	for _, n := range info.Nodes {
		if !strings.Contains(out, "->  "+n.Addr+"  "+n.Role) {
			t.Errorf("listener table lacks %s %s:\n%s", n.Addr, n.Role, out)
		}
	}
	// Every CLUSTER reply names local ports only, in RESP2 and RESP3.
	local := localSet(c)
	check := func(what, addr string) {
		t.Helper()
		if !local[addr] {
			t.Fatalf("%s names %s, which is not a local port (local: %v)", what, addr, localAddrs(c))
		}
	}
	ctx := context.Background()
	for _, proto := range []int{2, 3} {
		rc := redis.NewClient(&redis.Options{Addr: c.Local(t, info.Nodes[0].Addr), Protocol: proto})
		defer rc.Close()
		//lint:ignore SA1019 CLUSTER SLOTS is what clients older than Redis 7 send: the gateway must rewrite it too
		slots, err := rc.ClusterSlots(ctx).Result()
		if err != nil || len(slots) == 0 {
			t.Fatalf("CLUSTER SLOTS: %v, %v", slots, err)
		}
		n := 0
		for _, s := range slots {
			for _, nd := range s.Nodes {
				check("CLUSTER SLOTS", nd.Addr)
				n++
			}
		}
		shards, err := rc.ClusterShards(ctx).Result()
		if err != nil || len(shards) != 3 {
			t.Fatalf("CLUSTER SHARDS: %v, %v", shards, err)
		}
		for _, sh := range shards {
			for _, nd := range sh.Nodes {
				check("CLUSTER SHARDS endpoint", net.JoinHostPort(nd.Endpoint, strconv.FormatInt(nd.Port, 10)))
				check("CLUSTER SHARDS ip", net.JoinHostPort(nd.IP, strconv.FormatInt(nd.Port, 10)))
			}
		}
		nodes, err := rc.ClusterNodes(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(nodes), "\n")
		if len(lines) != 6 {
			t.Fatalf("CLUSTER NODES has %d lines, want 6:\n%s", len(lines), nodes)
		}
		for _, l := range lines {
			f := strings.Fields(l)
			addr, _, _ := strings.Cut(f[1], "@") // the bus port is not rewritten: no client uses it
			check("CLUSTER NODES", addr)
		}
		if f := strings.Fields(lines[0]); len(f) > 3 && f[3] != "-" { // a replica: CLUSTER REPLICAS of its master
			//lint:ignore SA1019 CLUSTER SLAVES, the old spelling of REPLICAS, which clients still send: the gateway must rewrite it too
			reps, err := rc.ClusterSlaves(ctx, f[3]).Result()
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range reps {
				addr, _, _ := strings.Cut(strings.Fields(r)[1], "@")
				check("CLUSTER REPLICAS", addr)
			}
		}
	}
}

// testClusterRedisCLI: redis-cli -c writes and reads 10,000 keys spread
// over all slots, following MOVED redirects that name local ports.
func testClusterRedisCLI(t *testing.T, env *clusterEnv, c *connect, transport string) {
	// Sorted by slot, so that redis-cli reconnects only when the owner
	// changes (each redirect costs it a new connection), then a few
	// hundred in random order, each likely redirected.
	keys := clusterKeys("cli-"+transport, 10000)
	slices.SortStableFunc(keys[:9700], func(a, b string) int { return testenv.KeySlot(a) - testenv.KeySlot(b) })
	var set, get strings.Builder
	for i, k := range keys {
		fmt.Fprintf(&set, "SET %s v%d\n", k, i)
		fmt.Fprintf(&get, "GET %s\n", k)
	}
	local := localAddrs(c)[0]
	start := time.Now()
	out := redisCLIStdin(t, local, set.String(), "-c")
	if n := strings.Count(out, "OK\n"); n != len(keys) {
		t.Fatalf("redis-cli -c SET: %d OK replies, want %d; output starts %q", n, len(keys), head(out, 500))
	}
	out = redisCLIStdin(t, local, get.String(), "-c")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var vals []string
	for _, l := range lines {
		if strings.HasPrefix(l, "-> Redirected") {
			assertOnlyLocal(t, c, "redis-cli redirect", l)
			continue
		}
		vals = append(vals, l)
	}
	if len(vals) != len(keys) {
		t.Fatalf("redis-cli -c GET: %d replies, want %d", len(vals), len(keys))
	}
	for i, v := range vals {
		if v != fmt.Sprintf("v%d", i) {
			t.Fatalf("GET %s through redis-cli -c: %q, want v%d", keys[i], v, i)
		}
	}
	t.Logf("redis-cli -c: 10000 SET + 10000 GET in %s", time.Since(start).Round(time.Millisecond))
	// The keys are really in the cluster.
	direct := env.Cluster.ClusterClient(t)
	ctx := context.Background()
	for _, i := range []int{0, 1234, 9999} {
		if got, err := direct.Get(ctx, keys[i]).Result(); err != nil || got != fmt.Sprintf("v%d", i) {
			t.Fatalf("key %s read directly: %q, %v", keys[i], got, err)
		}
	}
}

func head(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// tunnelClusterClient returns a go-redis ClusterClient seeded with the
// client's local addresses only.
func tunnelClusterClient(t testing.TB, c *connect) *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:       localAddrs(c),
		DialTimeout: 5 * time.Second,
		ReadTimeout: 10 * time.Second,
	})
	t.Cleanup(func() { cc.Close() })
	return cc
}

// testClusterGoRedis: a go-redis ClusterClient that knows only local
// addresses writes and reads 10,000 keys, and every node client it made
// is a local port.
func testClusterGoRedis(t *testing.T, env *clusterEnv, c *connect, transport string) {
	ctx := context.Background()
	cc := tunnelClusterClient(t, c)
	keys := clusterKeys("goredis-"+transport, 10000)
	start := time.Now()
	for lo := 0; lo < len(keys); lo += 1000 {
		_, err := cc.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := lo; i < lo+1000; i++ {
				p.Set(ctx, keys[i], "g"+strconv.Itoa(i), 0)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("pipelined SET: %v", err)
		}
	}
	for i, k := range keys {
		if i%10 != 0 { // every 10th one by one, the rest pipelined below
			continue
		}
		if got, err := cc.Get(ctx, k).Result(); err != nil || got != "g"+strconv.Itoa(i) {
			t.Fatalf("GET %s: %q, %v", k, got, err)
		}
	}
	cmds, err := cc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Get(ctx, k)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("pipelined GET: %v", err)
	}
	for i, cmd := range cmds {
		if got := cmd.(*redis.StringCmd).Val(); got != "g"+strconv.Itoa(i) {
			t.Fatalf("pipelined GET %s: %q", keys[i], got)
		}
	}
	t.Logf("go-redis ClusterClient: 10000 SET + 11000 GET in %s", time.Since(start).Round(time.Millisecond))
	local := localSet(c)
	var mu sync.Mutex
	var seen []string
	err = cc.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, n.Options().Addr)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range seen {
		if !local[a] {
			t.Fatalf("go-redis talks to %s, which is not a local port (local: %v)", a, localAddrs(c))
		}
	}
	if got, err := env.Cluster.ClusterClient(t).Get(ctx, keys[4321]).Result(); err != nil || got != "g4321" {
		t.Fatalf("key read directly: %q, %v", got, err)
	}
}

// testClusterRedisBenchmark: redis-benchmark --cluster finds the masters
// through the tunnel (CLUSTER NODES, rewritten) and runs against them.
func testClusterRedisBenchmark(t *testing.T, c *connect) {
	bin := testenv.RequireBinary(t, "redis-benchmark")
	host, port, _ := net.SplitHostPort(localAddrs(c)[0])
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--cluster", "-h", host, "-p", port, "-n", "10000", "-t", "set,get", "-q")
	out, err := cmd.CombinedOutput()
	t.Logf("redis-benchmark --cluster:\n%s", out)
	if err != nil {
		t.Fatalf("redis-benchmark --cluster: %v", err)
	}
	text := string(out)
	for _, want := range []string{"SET: ", "GET: ", "requests per second"} {
		if !strings.Contains(text, want) {
			t.Fatalf("redis-benchmark output lacks %q", want)
		}
	}
	if strings.Contains(text, "rror") {
		t.Fatalf("redis-benchmark reported errors")
	}
	// It printed the masters it found: local ports only.
	assertOnlyLocal(t, c, "redis-benchmark --cluster master list", text)
}

// trafficStats counts the commands of a traffic generator.
type trafficStats struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
}

func (s *trafficStats) fail(format string, args ...any) {
	s.failed.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) < 10 {
		s.errs = append(s.errs, fmt.Sprintf(format, args...))
	}
}

// runTraffic writes and reads keys with a go-redis ClusterClient through
// the tunnel until stop is closed (and at most for max), each GET
// checking the value of the SET before it.
func runTraffic(cc *redis.ClusterClient, keys []string, workers int, stop <-chan struct{}, max time.Duration) (*trafficStats, func()) {
	st := &trafficStats{}
	var wg sync.WaitGroup
	deadline := time.Now().Add(max)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := w; time.Now().Before(deadline); i += workers {
				select {
				case <-stop:
					return
				default:
				}
				k := keys[i%len(keys)]
				v := fmt.Sprintf("%s=%d", k, i)
				if err := cc.Set(ctx, k, v, 0).Err(); err != nil {
					st.fail("SET %s: %v", k, err)
					continue
				}
				got, err := cc.Get(ctx, k).Result()
				switch {
				case err != nil:
					st.fail("GET %s: %v", k, err)
				case got != v:
					st.fail("GET %s: %q, want %q", k, got, v)
				default:
					st.ok.Add(2)
				}
			}
		}()
	}
	return st, wg.Wait
}

// roleOf returns the role and slots of addr in the client's topology.
func roleOf(c *connect, addr string) (string, string) {
	for _, n := range c.Client.Topology().Nodes {
		if n.Addr == addr {
			return n.Role, n.Slots
		}
	}
	return "", ""
}

// slotsContain reports whether ranges ("0-5460,10923") hold slot.
func slotsContain(ranges string, slot int) bool {
	for _, r := range strings.Split(ranges, ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		b := a
		if isRange {
			b, _ = strconv.Atoi(hi)
		}
		if slot >= a && slot <= b {
			return true
		}
	}
	return false
}

// migrationSlot picks a different slot for each transport's failover and
// migration, none of them in the first master's range (0-5460), so that
// the failovers never demote env.Node0, which the plain target "node0"
// and the throughput comparison use.
func migrationSlot(transport string) int {
	switch transport {
	case "quic":
		return 6000
	case "tls":
		return 12000
	case "ssh":
		return 7000
	}
	return 13000
}

// testClusterChanges: under steady traffic, a replica takes over with
// CLUSTER FAILOVER, then a slot migrates with half of its keys moved (the
// client sees ASK) and then all (MOVED). No command fails, redirects name
// local ports, and the new roles and slot owners reach the client
// because a client saw a disagreeing MOVED and asked the gateway.
func testClusterChanges(t *testing.T, env *clusterEnv, c *connect, transport string) {
	ctx := context.Background()
	cl := env.Cluster
	slot := migrationSlot(transport)
	tag := "{" + testenv.KeyInSlot(slot) + "}"
	var keys, slotKeys []string
	for i := range 200 {
		slotKeys = append(slotKeys, fmt.Sprintf("%s:%s:%d", tag, transport, i))
	}
	keys = append(keys, clusterKeys("traffic-"+transport, 1000)...)
	keys = append(keys, slotKeys...)
	cc := tunnelClusterClient(t, c)
	for _, k := range slotKeys { // so that MoveSlotKeys has keys to move
		if err := cc.Set(ctx, k, "initial", 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
	}

	stop := make(chan struct{})
	stats, wait := runTraffic(cc, keys, 4, stop, 3*time.Minute)
	stopped := false
	stopTraffic := func() {
		if !stopped {
			stopped = true
			close(stop)
			wait()
		}
	}
	defer stopTraffic()
	progress := func(what string) {
		t.Helper()
		n := stats.ok.Load()
		waitFor(t, 20*time.Second, "traffic "+what, func() bool { return stats.ok.Load() >= n+200 })
	}
	progress("before the failover")

	// Failover.
	oldMaster := cl.MasterForSlot(t, slot)
	if oldMaster == env.Node0 {
		t.Fatalf("slot %d is served by %s, which must stay a master", slot, env.Node0.Addr)
	}
	replica := cl.Replicas(t, oldMaster)[0]
	cl.Failover(t, replica)
	waitFor(t, 20*time.Second, "the failover to reach the client's topology", func() bool {
		r1, s1 := roleOf(c, replica.Addr)
		r2, _ := roleOf(c, oldMaster.Addr)
		return r1 == "master" && slotsContain(s1, slot) && r2 == "replica"
	})
	progress("after the failover")

	// Migration of slot from the new master to another master.
	from := replica
	var to *testenv.Redis
	for _, m := range cl.Masters(t) {
		if m != from {
			to = m
			break
		}
	}
	plainFrom := redis.NewClient(&redis.Options{Addr: c.Local(t, from.Addr)})
	defer plainFrom.Close()
	toLocal := c.Local(t, to.Addr)
	cl.BeginMigrateSlot(t, slot, from, to)
	if n := cl.MoveSlotKeys(t, slot, from, to, len(slotKeys)/2); n == 0 {
		t.Fatal("no key moved")
	}
	progress("while the slot is half migrated")
	// A key that moved is answered with ASK naming the target's local port.
	var asked bool
	for _, k := range slotKeys {
		err := plainFrom.Get(ctx, k).Err()
		if err == nil {
			continue
		}
		want := fmt.Sprintf("ASK %d %s", slot, toLocal)
		if err.Error() != want {
			t.Fatalf("GET %s at the source while migrating: %v, want %q", k, err, want)
		}
		asked = true
		break
	}
	if !asked {
		t.Fatal("no key of the migrating slot was answered with ASK")
	}
	cl.FinishMigrateSlot(t, slot, from, to)
	err := plainFrom.Get(ctx, slotKeys[0]).Err()
	if want := fmt.Sprintf("MOVED %d %s", slot, toLocal); err == nil || err.Error() != want {
		t.Fatalf("GET at the source after the migration: %v, want %q", err, want)
	}
	waitFor(t, 20*time.Second, "the migration to reach the client's topology", func() bool {
		_, s := roleOf(c, to.Addr)
		_, sf := roleOf(c, from.Addr)
		return slotsContain(s, slot) && !slotsContain(sf, slot)
	})
	progress("after the migration")
	stopTraffic()
	t.Logf("traffic: %d commands ok, %d failed", stats.ok.Load(), stats.failed.Load())
	if n := stats.failed.Load(); n > 0 {
		t.Fatalf("%d commands failed during failover and migration, first: %v", n, stats.errs)
	}
	// All data is there.
	for _, k := range slotKeys {
		if err := cc.Get(ctx, k).Err(); err != nil {
			t.Fatalf("GET %s after the migration: %v", k, err)
		}
	}
	if log := c.Log.String(); !strings.Contains(log, "topology update from the gateway") {
		t.Errorf("client log does not mention the topology update")
	}
}

// firstSlot returns the first slot that r serves.
func firstSlot(t testing.TB, r *testenv.Redis) int {
	t.Helper()
	shards, err := r.Client(t).ClusterShards(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range shards {
		for _, n := range sh.Nodes {
			if n.ID == r.ClusterID() && n.Role == "master" && len(sh.Slots) > 0 {
				return int(sh.Slots[0].Start)
			}
		}
	}
	t.Fatalf("%s serves no slot", r.Addr)
	return 0
}

// BenchmarkCluster_PipelinedGET measures pipelined GETs (16 per round
// trip, 4 connections) of one key through the cluster target, whose
// replies go through the RESP rewriter, and through the same node as a
// plain redis target, over every transport. Compare the GET/s of
// .../cluster with .../plain.
func BenchmarkCluster_PipelinedGET(b *testing.B) {
	env := startClusterEnv(b)
	key := "{" + testenv.KeyInSlot(firstSlot(b, env.Node0)) + "}:bench"
	if err := env.Node0.Client(b).Set(context.Background(), key, strings.Repeat("x", 64), 0).Err(); err != nil {
		b.Fatal(err)
	}
	for _, tr := range transports {
		cluster := mustConnect(b, env.Gateway, tr, "prod", env.Key)
		plain := mustConnect(b, env.Gateway, tr, "node0", env.Key)
		for _, target := range []struct{ name, addr string }{
			{"plain", plain.Local(b, env.Node0.Addr)},
			{"cluster", cluster.Local(b, env.Node0.Addr)},
		} {
			b.Run(tr+"/"+target.name, func(b *testing.B) {
				rc := redis.NewClient(&redis.Options{Addr: target.addr, PoolSize: 4})
				defer rc.Close()
				ctx := context.Background()
				b.SetParallelism(1)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						cmds, err := rc.Pipelined(ctx, func(p redis.Pipeliner) error {
							for range 16 {
								p.Get(ctx, key)
							}
							return nil
						})
						if err != nil || len(cmds) != 16 {
							b.Errorf("pipelined GET: %v", err)
							return
						}
					}
				})
				b.ReportMetric(16*float64(b.N)/b.Elapsed().Seconds(), "GET/s")
			})
		}
	}
}

// TestCluster_NewNode: a node joins the cluster (CLUSTER MEET) and takes a
// slot; the gateway discovers with CLUSTER SLOTS, as its user may not run
// CLUSTER SHARDS. The first MOVED that names it makes the client ask the gateway,
// which rediscovers and pushes the node; the client opens a port for it
// and the MOVED the application sees already names that port.
func TestCluster_NewNode(t *testing.T) {
	ctx := context.Background()
	cl := testenv.StartCluster(t, 3, 0)
	// The gateway's user may not run CLUSTER SHARDS, as on some managed
	// services: discovery falls back to CLUSTER SLOTS.
	pw := randomSecret(t)
	user := testenv.ACLUser{Name: "gateway", Password: pw, Rules: []string{"~*", "&*", "+@all", "-cluster|shards"}}
	for _, r := range cl.Nodes {
		r.AddUser(t, user)
	}
	asUser := redis.NewClient(&redis.Options{Addr: cl.Nodes[0].Addr, Username: user.Name, Password: pw})
	defer asUser.Close()
	if err := asUser.ClusterShards(ctx).Err(); err == nil || !strings.HasPrefix(err.Error(), "NOPERM") {
		t.Fatalf("CLUSTER SHARDS as %s: %v, want NOPERM", user.Name, err)
	}
	k := newKey(t, "dev@laptop")
	g := startGateway(t, map[string]*server.Target{
		"prod": {Type: server.TypeRedisCluster, Nodes: []string{cl.Nodes[0].Addr}, Refresh: time.Hour, Networks: loopbackNetworks,
			Auth: &server.UpstreamAuth{Username: "gateway", PasswordFile: writeSecret(t, pw)}},
	}, []string{k.Line})
	c := mustConnect(t, g, transports[0], "prod", k)
	if n := len(c.Client.LocalAddrs()); n != 3 {
		t.Fatalf("%d local ports, want 3", n)
	}

	// A fourth node, its cluster bus on a port of its own.
	bus := testenv.FreeLoopbackListener(t)
	busPort := strconv.Itoa(bus.Addr().(*net.TCPAddr).Port)
	bus.Close()
	n4 := testenv.StartRedis(t, "--cluster-enabled", "yes", "--cluster-announce-ip", "127.0.0.1",
		"--cluster-port", busPort, "--cluster-node-timeout", "2000")
	n4.AddUser(t, user)
	admin := func(r *testenv.Redis) *redis.Client { return r.Client(t) }
	n4ID, err := admin(n4).ClusterMyID(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	src := cl.MasterForSlot(t, 1000)
	var srcBus string
	nodes, err := admin(src).ClusterNodes(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(nodes, "\n") {
		if f := strings.Fields(l); len(f) > 2 && strings.Contains(f[2], "myself") {
			_, srcBus, _ = strings.Cut(strings.Split(f[1], ",")[0], "@")
		}
	}
	if err := admin(n4).Do(ctx, "CLUSTER", "MEET", "127.0.0.1", src.Port, srcBus).Err(); err != nil {
		t.Fatalf("CLUSTER MEET: %v", err)
	}
	waitFor(t, 30*time.Second, "every node to know the new one", func() bool {
		for _, r := range cl.Nodes {
			s, err := admin(r).ClusterNodes(ctx).Result()
			if err != nil || !strings.Contains(s, n4ID) || strings.Contains(s, "handshake") {
				return false
			}
		}
		info, err := admin(n4).ClusterInfo(ctx).Result()
		return err == nil && strings.Contains(info, "cluster_state:ok")
	})

	// Slot 1000 and its key move to the new node.
	key := "{" + testenv.KeyInSlot(1000) + "}:k"
	direct := cl.ClusterClient(t)
	if err := direct.Set(ctx, key, "moved along", 0).Err(); err != nil {
		t.Fatal(err)
	}
	srcID := src.ClusterID()
	must := func(r *testenv.Redis, args ...any) {
		t.Helper()
		if err := admin(r).Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%v on %s: %v", args, r.Addr, err)
		}
	}
	must(n4, "CLUSTER", "SETSLOT", 1000, "IMPORTING", srcID)
	must(src, "CLUSTER", "SETSLOT", 1000, "MIGRATING", n4ID)
	must(src, "MIGRATE", "127.0.0.1", n4.Port, "", 0, 5000, "KEYS", key)
	must(n4, "CLUSTER", "SETSLOT", 1000, "NODE", n4ID)
	must(src, "CLUSTER", "SETSLOT", 1000, "NODE", n4ID)
	for _, r := range cl.Nodes {
		if r != src {
			must(r, "CLUSTER", "SETSLOT", 1000, "NODE", n4ID)
		}
	}

	// Through the tunnel, the source answers MOVED, rewritten to a port
	// that did not exist a moment ago.
	plainSrc := redis.NewClient(&redis.Options{Addr: c.Local(t, src.Addr), MaxRetries: -1})
	defer plainSrc.Close()
	err = plainSrc.Get(ctx, key).Err()
	local, ok := c.Client.LocalAddrs()[n4.Addr]
	if !ok {
		t.Fatalf("no local port for the new node after the MOVED (%v); the MOVED was %v", c.Client.LocalAddrs(), err)
	}
	if want := "MOVED 1000 " + local; err == nil || err.Error() != want {
		t.Fatalf("GET through the source's port: %v, want %q", err, want)
	}
	if log := c.Log.String(); !strings.Contains(log, "asking the gateway to refresh") {
		t.Errorf("client log does not show the refresh request")
	}
	cc := tunnelClusterClient(t, c)
	if got, err := cc.Get(ctx, key).Result(); err != nil || got != "moved along" {
		t.Fatalf("GET through go-redis: %q, %v", got, err)
	}
	waitFor(t, 10*time.Second, "the new node to serve slot 1000 in the client's topology", func() bool {
		r, s := roleOf(c, n4.Addr)
		return r == "master" && slotsContain(s, 1000)
	})
}
