package server

import (
	"testing"

	"github.com/cachetun/cachetun/control"
)

// TestLayout: the topology log line names each node's id (where the cache
// has ids), address, role and slots.
func TestLayout(t *testing.T) {
	got := layout([]control.NodeInfo{
		{Addr: "10.0.1.230:6379", ID: "07c37dfeb235213a872192d90877d0cd55635b91", Role: "master", Slots: "0-5460"},
		{Addr: "10.0.1.231:6379", ID: "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca", Role: "replica"},
		{Addr: "10.0.1.232:11211"},
	})
	want := "07c37dfeb235213a872192d90877d0cd55635b91 10.0.1.230:6379 master 0-5460; " +
		"e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 10.0.1.231:6379 replica; 10.0.1.232:11211"
	if got != want {
		t.Errorf("layout:\n got %q\nwant %q", got, want)
	}
}
