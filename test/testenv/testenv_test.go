package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestStartRedis(t *testing.T) {
	r := StartRedis(t)
	ctx := ctxT(t)

	before := r.TotalConnections(t)
	if got := r.TotalConnections(t); got != before {
		t.Fatalf("TotalConnections changed by reading it: got %d, want %d", got, before)
	}
	if got := r.ConnectedClients(t); got != 0 {
		t.Fatalf("ConnectedClients() = %d, want 0", got)
	}

	c := r.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got := r.ConnectedClients(t); got != 1 {
		t.Errorf("ConnectedClients() with one client = %d, want 1", got)
	}
	if got := r.TotalConnections(t); got != before+1 {
		t.Errorf("TotalConnections() = %d, want %d", got, before+1)
	}

	out, err := r.CLI(t, "GET", "k")
	if err != nil || out != "v" {
		t.Errorf("CLI GET k = %q, %v; want %q, nil", out, err, "v")
	}
	if out, err := r.CLI(t, "NOSUCHCOMMAND"); err == nil {
		t.Errorf("CLI NOSUCHCOMMAND = %q, nil; want an error", out)
	}

	r.Restart()
	if got, err := c.Get(ctx, "k").Result(); !errors.Is(err, redis.Nil) {
		t.Errorf("GET k after restart = %q, %v; want redis.Nil (no persistence)", got, err)
	}
	if err := c.Set(ctx, "k", "v2", 0).Err(); err != nil {
		t.Fatalf("SET after restart: %v", err)
	}

	r.Stop()
	r.Stop() // idempotent
	if r.Running() {
		t.Fatal("Running() after Stop = true")
	}
	if _, err := net.DialTimeout("tcp", r.Addr, time.Second); err == nil {
		t.Errorf("dial %s after Stop succeeded", r.Addr)
	}
}

func TestStartRedis_requirePass(t *testing.T) {
	r := StartRedis(t, "--requirepass", "s3cret")
	ctx := ctxT(t)
	if r.Password != "s3cret" {
		t.Fatalf("Password = %q, want %q", r.Password, "s3cret")
	}
	if err := r.Client(t).Ping(ctx).Err(); err != nil {
		t.Fatalf("PING with password: %v", err)
	}
	opts := r.Options()
	opts.Password = ""
	anon := redis.NewClient(opts)
	defer anon.Close()
	if err := anon.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("PING without password = %v, want NOAUTH", err)
	}
	if out, err := r.CLI(t, "PING"); err != nil || out != "PONG" {
		t.Errorf("CLI PING = %q, %v; want PONG, nil", out, err)
	}
}

func TestStartRedis_retriesWhenPortTaken(t *testing.T) {
	taken := FreeLoopbackListener(t)
	calls := 0
	pick := func(n int) ([]int, error) {
		calls++
		if calls == 1 {
			return []int{taken.Addr().(*net.TCPAddr).Port}, nil
		}
		return freePorts(n)
	}
	r := startRedis(t, redisConfig{pick: pick})
	if calls != 2 {
		t.Errorf("picked ports %d times, want 2", calls)
	}
	if r.Addr == taken.Addr().String() {
		t.Errorf("server claims the taken address %s", r.Addr)
	}
	if err := r.Client(t).Ping(ctxT(t)).Err(); err != nil {
		t.Errorf("PING: %v", err)
	}
}

func TestStartRedisTLS(t *testing.T) {
	r := StartRedisTLS(t)
	ctx := ctxT(t)
	pwFile := filepath.Join(t.TempDir(), "app.password")
	if err := os.WriteFile(pwFile, []byte("app-pass\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.AddUser(t, ACLUser{Name: "app", PasswordFile: pwFile})

	opts := r.Options()
	opts.Username, opts.Password = "app", "app-pass"
	app := redis.NewClient(opts)
	defer app.Close()
	if err := app.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET as app over TLS: %v", err)
	}
	if got, err := app.ACLWhoAmI(ctx).Result(); err != nil || got != "app" {
		t.Errorf("ACL WHOAMI = %q, %v; want app", got, err)
	}
	opts.Password = "wrong"
	bad := redis.NewClient(opts)
	defer bad.Close()
	if err := bad.Ping(ctx).Err(); err == nil {
		t.Error("PING with a wrong password succeeded")
	}
	if out, err := r.CLI(t, "GET", "k"); err != nil || out != "v" {
		t.Errorf("CLI GET k over TLS = %q, %v; want v, nil", out, err)
	}

	// Plain TCP is refused by a TLS-only port.
	plain := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1, DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second})
	defer plain.Close()
	if err := plain.Ping(ctx).Err(); err == nil {
		t.Error("PING over plain TCP to the TLS port succeeded")
	}

	r.Restart()
	if err := app.Ping(ctx).Err(); err != nil {
		t.Errorf("PING as app after restart: %v", err)
	}
}

func TestStartMemcached(t *testing.T) {
	m := StartMemcached(t)
	before := m.TotalConnections(t)
	if _, ok := m.Get(t, "missing"); ok {
		t.Error("Get(missing) found a value")
	}
	m.Set(t, "k", "hello\r\nworld")
	if got, ok := m.Get(t, "k"); !ok || got != "hello\r\nworld" {
		t.Errorf("Get(k) = %q, %v; want %q, true", got, ok, "hello\r\nworld")
	}
	if got := m.TotalConnections(t); got != before {
		t.Errorf("TotalConnections() after helper calls = %d, want %d", got, before)
	}
	if got := m.CurrentConnections(t); got != 0 {
		t.Errorf("CurrentConnections() = %d, want 0", got)
	}

	c, err := net.Dial("tcp", m.Addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "version\r\n")
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "VERSION ") {
		t.Errorf("version reply = %q, %v", buf[:n], err)
	}
	c.Close()
	if got := m.TotalConnections(t); got != before+1 {
		t.Errorf("TotalConnections() after one dial = %d, want %d", got, before+1)
	}

	m.Restart()
	if _, ok := m.Get(t, "k"); ok {
		t.Error("Get(k) after restart found a value")
	}
}

func TestKeySlot(t *testing.T) {
	// Values from the Redis Cluster specification and CLUSTER KEYSLOT.
	tests := []struct {
		key  string
		want int
	}{
		{"123456789", 12739},
		{"foo", 12182},
		{"{user1000}.following", KeySlot("user1000")},
		{"foo{}{bar}", KeySlot("foo{}{bar}")},
		{"foo{{bar}}zap", KeySlot("{bar")},
	}
	for _, tt := range tests {
		if got := KeySlot(tt.key); got != tt.want {
			t.Errorf("KeySlot(%q) = %d, want %d", tt.key, got, tt.want)
		}
	}
	for _, slot := range []int{0, 1, 5461, 16383} {
		if got := KeySlot(KeyInSlot(slot)); got != slot {
			t.Errorf("KeySlot(KeyInSlot(%d)) = %d", slot, got)
		}
	}
}

func TestStartCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 6-node Redis Cluster; skipped with -short")
	}
	start := time.Now()
	c := StartCluster(t, 3, 1)
	t.Logf("cluster of %d nodes ready in %v", len(c.Nodes), time.Since(start))
	ctx := ctxT(t)

	if got := len(c.Masters(t)); got != 3 {
		t.Fatalf("%d masters, want 3", got)
	}
	cc := c.ClusterClient(t)
	for i := range 50 {
		if err := cc.Set(ctx, fmt.Sprintf("key:%d", i), i, 0).Err(); err != nil {
			t.Fatalf("SET key:%d: %v", i, err)
		}
	}

	// The slot's master answers for its keys; KEYSLOT agrees with KeySlot.
	key := "key:7"
	slot := KeySlot(key)
	owner := c.MasterForSlot(t, slot)
	if out, err := owner.CLI(t, "CLUSTER", "KEYSLOT", key); err != nil || out != fmt.Sprint(slot) {
		t.Errorf("CLUSTER KEYSLOT %s = %q, %v; want %d", key, out, err, slot)
	}
	if out, err := owner.CLI(t, "GET", key); err != nil || out != "7" {
		t.Errorf("GET %s on its master = %q, %v; want 7", key, out, err)
	}

	// Half-moved slot: a moved key is answered with -ASK by the source.
	var to *Redis
	for _, m := range c.Masters(t) {
		if m != owner {
			to = m
			break
		}
	}
	tag := "{" + KeyInSlot(slot) + "}"
	for _, k := range []string{tag + "a", tag + "b", tag + "c"} {
		if err := cc.Set(ctx, k, "x", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	c.BeginMigrateSlot(t, slot, owner, to)
	if n := c.MoveSlotKeys(t, slot, owner, to, 1); n != 1 {
		t.Fatalf("MoveSlotKeys(max 1) = %d, want 1", n)
	}
	direct := owner.Client(t)
	asks := 0
	for _, k := range []string{tag + "a", tag + "b", tag + "c", key} {
		err := direct.Get(ctx, k).Err()
		if err != nil && strings.HasPrefix(err.Error(), "ASK ") {
			asks++
		} else if err != nil {
			t.Fatalf("GET %s on source: %v", k, err)
		}
	}
	if asks != 1 {
		t.Errorf("%d ASK redirects from the source, want 1", asks)
	}
	for _, k := range []string{tag + "a", tag + "b", tag + "c", key} {
		if err := cc.Get(ctx, k).Err(); err != nil {
			t.Errorf("cluster GET %s during migration: %v", k, err)
		}
	}
	c.FinishMigrateSlot(t, slot, owner, to)
	if got := c.MasterForSlot(t, slot); got != to {
		t.Errorf("MasterForSlot(%d) = %s, want %s", slot, got.Addr, to.Addr)
	}
	if got, err := cc.Get(ctx, key).Result(); err != nil || got != "7" {
		t.Errorf("cluster GET %s after migration = %q, %v; want 7", key, got, err)
	}

	// Failover: the replica of the slot's master takes over.
	replicas := c.Replicas(t, to)
	if len(replicas) != 1 {
		t.Fatalf("%d replicas of %s, want 1", len(replicas), to.Addr)
	}
	c.Failover(t, replicas[0])
	if got := c.MasterForSlot(t, slot); got != replicas[0] {
		t.Errorf("MasterForSlot(%d) after failover = %s, want %s", slot, got.Addr, replicas[0].Addr)
	}
	for i := range 50 {
		if got, err := cc.Get(ctx, fmt.Sprintf("key:%d", i)).Int(); err != nil || got != i {
			t.Errorf("cluster GET key:%d after failover = %d, %v", i, got, err)
		}
	}
}
