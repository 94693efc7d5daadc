package test

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// writeSecret writes a password file the way an operator should (0600).
func writeSecret(t testing.TB, secret string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// redisCLIResult runs redis-cli against addr and returns its output and
// error instead of failing.
func redisCLIResult(t testing.TB, addr string, args ...string) (string, error) {
	t.Helper()
	cli := testenv.RequireBinary(t, "redis-cli")
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestUpstream_TLSAndACL: a redis-server that speaks only TLS and refuses
// the unauthenticated default user. The gateway does TLS (verifying the
// server against ca_file) and AUTH as an ACL user; on the laptop, plain
// redis-cli -p works and is that user. The password is in no message the
// client receives, no client log line, output or error, and no gateway
// log line. A wrong password is refused with the server's reason, also
// without the secret.
func TestUpstream_TLSAndACL(t *testing.T) {
	secret := randomSecret(t)
	wrong := randomSecret(t)
	r := testenv.StartRedisTLS(t, "--requirepass", randomSecret(t)) // no anonymous access
	r.AddUser(t, testenv.ACLUser{Name: "laptop-app", PasswordFile: writeSecret(t, secret)})
	k := newKey(t, "dev@laptop")
	tlsConf := &server.UpstreamTLS{CAFile: r.CAFile}
	g := startGateway(t, map[string]*server.Target{
		"secure":    {Type: server.TypeRedis, Nodes: []string{r.Addr}, TLS: tlsConf, Auth: &server.UpstreamAuth{Username: "laptop-app", PasswordFile: writeSecret(t, secret)}},
		"wrongpass": {Type: server.TypeRedis, Nodes: []string{r.Addr}, TLS: tlsConf, Auth: &server.UpstreamAuth{Username: "laptop-app", PasswordFile: writeSecret(t, wrong)}},
		"notls":     {Type: server.TypeRedis, Nodes: []string{r.Addr}},
	}, []string{k.Line})

	forEachTransport(t, func(t *testing.T, transport string) {
		c := mustConnect(t, g, transport, "secure", k)
		local := c.Local(t, r.Addr)
		if got := redisCLI(t, local, "ACL", "WHOAMI"); got != "laptop-app" {
			t.Fatalf("ACL WHOAMI through the tunnel: %q, want laptop-app", got)
		}
		if got := redisCLI(t, local, "SET", "k", "over tls "+transport); got != "OK" {
			t.Fatalf("SET: %q", got)
		}
		if got := redisCLI(t, local, "GET", "k"); got != "over tls "+transport {
			t.Fatalf("GET: %q", got)
		}
		// The Welcome (target and topology) as the client receives it.
		cl, err := client.New(client.Options{Servers: []string{g.ServerAddr(transport)}, Target: "secure", Transport: transport, Identity: k.Path, KnownHosts: g.KnownHosts(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sess, welcome, err := cl.Dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sess.Close()
		wj, _ := json.Marshal(welcome)
		topo, _ := json.Marshal(c.Client.Topology())

		// A wrong password: the gateway refuses the stream and says why.
		bad := mustConnect(t, g, transport, "wrongpass", k)
		out, err := redisCLIResult(t, bad.Local(t, r.Addr), "PING")
		if err == nil && out == "PONG" {
			t.Fatalf("PING with a wrong upstream password: %q", out)
		}
		bad.Log.waitLog(t, "gateway refused the connection")
		// The reason is cachetun's own sentence: nothing the cache sent
		// (its WRONGPASS line stays in the gateway's log).
		if l := bad.Log.String(); !strings.Contains(l, "refused the gateway's credentials") || strings.Contains(l, "WRONGPASS") {
			t.Errorf("client log does not give cachetun's reason, or echoes the cache's:\n%s", l)
		}
		// Plain TCP to a TLS port: refused too, as unreachable.
		plain := mustConnect(t, g, transport, "notls", k)
		if out, err := redisCLIResult(t, plain.Local(t, r.Addr), "PING"); err == nil && out == "PONG" {
			t.Fatalf("PING over plain TCP to a TLS-only server: %q", out)
		}

		for what, text := range map[string]string{
			"client log":         c.Log.String(),
			"client output":      c.Out.String(),
			"welcome":            string(wj),
			"topology":           string(topo),
			"refused client log": bad.Log.String(),
			"refused redis-cli":  out,
		} {
			for _, s := range []string{secret, wrong} {
				if strings.Contains(text, s) {
					t.Errorf("the upstream password appears in the %s", what)
				}
			}
		}
	})
	log := g.Log.String()
	if !strings.Contains(log, "upstream refused AUTH") || !strings.Contains(log, "WRONGPASS") {
		t.Errorf("gateway log does not record the refused AUTH with the cache's answer")
	}
	for _, s := range []string{secret, wrong} {
		if strings.Contains(log, s) {
			t.Errorf("the upstream password appears in the gateway log")
		}
	}
}

// TestUpstream_PasswordFilePermissions: a password file others can read is
// refused at start, with the chmod that fixes it.
func TestUpstream_PasswordFilePermissions(t *testing.T) {
	path := writeSecret(t, "hunter2")
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	dir := t.TempDir()
	cfg.HostKey = filepath.Join(dir, "host")
	if _, err := auth.GenerateKey(cfg.HostKey, "host"); err != nil {
		t.Fatal(err)
	}
	cfg.AuthorizedKeys = filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(cfg.AuthorizedKeys, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Targets = map[string]*server.Target{"r": {Type: server.TypeRedis, Nodes: []string{"127.0.0.1:6379"}, Auth: &server.UpstreamAuth{PasswordFile: path}}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	_, err := server.New(cfg, nil)
	if err == nil {
		t.Fatal("server accepted a world-readable password file")
	}
	for _, want := range []string{"too open", "chmod 600"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error holds the password")
	}
}
