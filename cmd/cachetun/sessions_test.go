package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cachetun/cachetun/client"
)

// TestConnectCmd_Sessions: profiles on one gateway share a session (their
// local_port stays theirs); a profile on another gateway, or with another
// transport, gets its own.
func TestConnectCmd_Sessions(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	err := os.WriteFile(cfg, []byte(`profiles:
  a: {server: gw1:4433, local_port: 7000}
  b: {server: gw1:4433, target: bee}
  c: {server: gw2:4433}
  d: {server: gw1:4433, transport: ssh}
`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	c := &ConnectCmd{Profiles: []string{"a", "b", "c", "d", "a"}, Config: cfg}
	got, err := c.sessions()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("%d sessions, want 3 (gw1, gw2, gw1 over ssh): %+v", len(got), got)
	}
	names := func(o client.Options) []string {
		var n []string
		for _, t := range o.Targets {
			n = append(n, t.Name)
		}
		return n
	}
	if !slices.Equal(names(got[0]), []string{"a", "bee"}) || !slices.Equal(got[0].Servers, []string{"gw1:4433"}) {
		t.Fatalf("session 1: %v on %v, want [a bee] on gw1", names(got[0]), got[0].Servers)
	}
	if lp := got[0].Targets[0].LocalPort; lp == nil || *lp != 7000 || got[0].Targets[1].LocalPort != nil {
		t.Fatalf("local ports: a %v, bee %v; want 7000 and the default", lp, got[0].Targets[1].LocalPort)
	}
	if got[0].Targets[1].Profile != "b" {
		t.Fatalf("target bee shows as %q, want its profile b", got[0].Targets[1].Profile)
	}
	if !slices.Equal(names(got[1]), []string{"c"}) || !slices.Equal(names(got[2]), []string{"d"}) || got[2].Transport != "ssh" {
		t.Fatalf("sessions 2 and 3: %v, %v over %s", names(got[1]), names(got[2]), got[2].Transport)
	}

	all := &ConnectCmd{Profiles: []string{"a"}, All: true, Config: cfg}
	got, err = all.sessions()
	if err != nil || len(got) != 1 || !got[0].All || got[0].Target != "" || len(got[0].Targets) != 0 {
		t.Fatalf("--all a: %+v, %v; want one session asking for all targets on gw1", got, err)
	}
}

// TestExecEnv: the variables exec hands to the command.
func TestExecEnv(t *testing.T) {
	eps := []client.TargetEndpoints{
		{Name: "prod-redis", Type: "redis-cluster", Nodes: []client.Endpoint{{Local: "127.0.0.1:7001"}, {Local: "127.0.0.1:7002"}}},
		{Name: "sessions.eu", Type: "memcached", Nodes: []client.Endpoint{{Local: "127.0.0.1:7003"}, {Local: "[::1]:7004"}}},
		{Name: "empty", Type: "tcp"},
	}
	got := execEnv(eps)
	want := []string{
		"CACHETUN_PROD_REDIS_ADDR=127.0.0.1:7001", "CACHETUN_PROD_REDIS_HOST=127.0.0.1", "CACHETUN_PROD_REDIS_PORT=7001",
		"CACHETUN_PROD_REDIS_NODES=127.0.0.1:7001,127.0.0.1:7002",
		"CACHETUN_SESSIONS_EU_ADDR=127.0.0.1:7003", "CACHETUN_SESSIONS_EU_HOST=127.0.0.1", "CACHETUN_SESSIONS_EU_PORT=7003",
		"CACHETUN_SESSIONS_EU_NODES=127.0.0.1:7003,[::1]:7004",
		"REDIS_URL=redis://127.0.0.1:7001",
		"MEMCACHED_SERVERS=127.0.0.1:7003,[::1]:7004",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("execEnv:\n got %q\nwant %q", got, want)
	}
	// Two redis targets: REDIS_URL would be a guess, so there is none.
	two := execEnv([]client.TargetEndpoints{eps[0], {Name: "b", Type: "redis", Nodes: []client.Endpoint{{Local: "127.0.0.1:1"}}}})
	for _, v := range two {
		if len(v) > 9 && v[:9] == "REDIS_URL" {
			t.Fatalf("REDIS_URL set with two redis targets: %s", v)
		}
	}
	if got := envName("a-b.c_9é"); got != "A_B_C_9_" {
		t.Fatalf("envName: %q", got)
	}
}
