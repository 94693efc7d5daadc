package client

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/cachetun/cachetun/client/resp"
	"github.com/cachetun/cachetun/control"
)

func TestSplitUpstream(t *testing.T) {
	for _, tc := range []struct{ in, host, port string }{
		{"10.0.1.231:6379", "10.0.1.231", "6379"},
		{"::1:6379", "::1", "6379"},
		{"[fe80::1]:6380", "fe80::1", "6380"},
		{":6379", "", "6379"},
		{"node.example:7000", "node.example", "7000"},
	} {
		h, p, ok := splitUpstream(tc.in)
		if !ok || h != tc.host || p != tc.port {
			t.Errorf("splitUpstream(%q) = %q %q %v", tc.in, h, p, ok)
		}
	}
	for _, bad := range []string{"nocolon", "host:"} {
		if _, _, ok := splitUpstream(bad); ok {
			t.Errorf("splitUpstream(%q) accepted", bad)
		}
	}
}

// testClient is a Client with just enough state for the rewriting logic.
func testClient(t *testing.T, info control.TargetInfo) *targetView {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c := &targetView{Client: &Client{log: slog.New(slog.DiscardHandler), runCtx: ctx}, listeners: map[string]*localListener{}}
	c.info = info
	c.mu.Lock()
	c.publishTopologyLocked()
	c.mu.Unlock()
	t.Cleanup(c.wg.Wait)
	return c
}

func TestClient_RedisMapAndRedirects(t *testing.T) {
	c := testClient(t, control.TargetInfo{Type: typeRedisCluster, Nodes: []control.NodeInfo{
		{Addr: "10.0.0.1:6379", Role: "master", Slots: "0-8191"},
		{Addr: "10.0.0.2:6379", Role: "master", Slots: "8192-16383"},
	}})
	tab := c.cluster.table.Load()
	tab.local = map[string]string{"10.0.0.1:6379": "127.0.0.1:7001", "10.0.0.2:6379": "127.0.0.1:7002", "[::1]:6379": "127.0.0.1:7003"}
	m := c.redisMap("10.0.0.1:6379")
	for up, want := range map[string]string{"10.0.0.2:6379": "127.0.0.1:7002", ":6379": "127.0.0.1:7001", "::1:6379": "127.0.0.1:7003"} {
		if got, ok := m(up); !ok || got != want {
			t.Errorf("map(%q) = %q %v, want %q", up, got, ok, want)
		}
	}
	if got, ok := m(":6380"); ok {
		t.Errorf("map(:6380) = %q: an empty host means this node, whose port is 6379", got)
	}
	on := c.onRedirect("10.0.0.1:6379")
	on(resp.KindMoved, 9000, "10.0.0.2:6379") // agrees with the topology
	on(resp.KindAsk, 100, "10.0.0.2:6379")    // a migration, not a change
	if c.cluster.refreshPending.Load() || c.cluster.refreshRunning.Load() || c.cluster.refreshes.Load() != 0 {
		t.Fatal("a redirect that agrees with the topology asked for a refresh")
	}
	on(resp.KindMoved, 100, "10.0.0.2:6379") // slot 100 is 10.0.0.1's
	waitUntil(t, func() bool { return c.cluster.refreshes.Load() == 1 })
	// A burst is merged: requests are at most one per refreshGap, so 100
	// redirects in a few microseconds make one or two more requests (two
	// when the refresher started between them), never one each.
	for range 100 {
		on(resp.KindMoved, 100, "10.0.0.2:6379")
	}
	// Quiet once nothing is pending and then no refresher runs: pending is
	// read first, because only a redirect sets it again, and a refresher
	// that has stopped running starts again only for a pending request.
	// From then on no refresh can follow, so the count is final.
	waitUntil(t, func() bool {
		return !c.cluster.refreshPending.Load() && !c.cluster.refreshRunning.Load() && c.cluster.refreshes.Load() >= 2
	})
	if n := c.cluster.refreshes.Load(); n < 2 || n > 3 {
		t.Fatalf("%d refresh requests after a burst of 100, want 2 or 3", n)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestForEachSlot(t *testing.T) {
	var got []int
	forEachSlot("0-2,10,16383-16390,x-3", func(s int) { got = append(got, s) })
	want := []int{0, 1, 2, 10, 16383}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}
