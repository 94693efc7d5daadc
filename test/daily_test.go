package test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// cliEnv is the environment of a cachetun process in these tests: a HOME
// of its own, no ssh-agent, no transport from the caller's environment.
func cliEnv(t *testing.T) []string {
	home := t.TempDir()
	return append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "SSH_AUTH_SOCK=", "CACHETUN_TRANSPORT=")
}

// gwArgs are the flags that point the binary at g over transport.
func gwArgs(t *testing.T, g *gateway, transport string, k key) []string {
	return []string{"--server", g.ServerAddr(transport), "--transport", transport, "-i", k.Path, "--known-hosts", g.KnownHosts(t), "--local-port", "0"}
}

// TestExec_RedisCluster: 'cachetun exec prod -- sh -c "redis-cli -c -h
// $CACHETUN_PROD_HOST -p $CACHETUN_PROD_PORT ..."' works against a real
// 6-node cluster (the SET and GET of keys in different slots follow MOVED
// through the rewritten redirects), exits with the command's status (0,
// 7, and redis-cli's own 1), and a SIGTERM to cachetun reaches the command.
func TestExec_RedisCluster(t *testing.T) {
	env := startClusterEnv(t)
	bin := cachetunBinary(t)
	forEachTransport(t, func(t *testing.T, transport string) {
		run := func(script string, stdin io.Reader) (string, string, int) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			args := append([]string{"exec", "prod"}, gwArgs(t, env.Gateway, transport, env.Key)...)
			cmd := exec.CommandContext(ctx, bin, append(args, "--", "sh", "-c", script)...)
			cmd.Env = cliEnv(t)
			var out, errb strings.Builder
			cmd.Stdout, cmd.Stderr, cmd.Stdin = &out, &errb, stdin
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			t.Logf("exec %q: exit %d\nstdout:\n%s\nstderr:\n%s", script, code, out.String(), errb.String())
			return out.String(), errb.String(), code
		}
		cli := `redis-cli -c -h "$CACHETUN_PROD_HOST" -p "$CACHETUN_PROD_PORT"`
		// Keys a and b live in slots 15495 and 3300: two masters.
		out, stderr, code := run(cli+` SET a 1 >/dev/null && `+cli+` SET b 2 >/dev/null && `+cli+` GET a && `+cli+` GET b && `+
			`echo "url=$REDIS_URL" && echo "nodes=$CACHETUN_PROD_NODES"`, nil)
		if code != 0 {
			t.Fatalf("exit %d, want 0", code)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 || lines[0] != "1" || lines[1] != "2" || !strings.HasPrefix(lines[2], "url=redis://127.0.0.1:") {
			t.Fatalf("output %q, want 1, 2, url=redis://127.0.0.1:PORT, nodes=...", lines)
		}
		if n := strings.Count(strings.TrimPrefix(lines[3], "nodes="), ",") + 1; n != 6 {
			t.Fatalf("CACHETUN_PROD_NODES has %d nodes, want 6: %s", n, lines[3])
		}
		if !strings.Contains(stderr, "prod  redis-cluster  via "+transport) {
			t.Errorf("the endpoint table is not on stderr:\n%s", stderr)
		}
		if got := env.Cluster.ClusterClient(t).Get(context.Background(), "b").Val(); got != "2" {
			t.Fatalf("b on the real cluster: %q, want 2", got)
		}
		if _, _, code := run(cli+` PING >/dev/null && exit 7`, nil); code != 7 {
			t.Fatalf("exit %d, want the command's 7", code)
		}
		if _, _, code := run(`redis-cli -h 127.0.0.1 -p 1 PING`, nil); code != 1 {
			t.Fatalf("exit %d, want redis-cli's 1 (connection refused)", code)
		}
	})

	// Without --local-port, exec takes free ports: the cluster's own
	// ports, connect's default, are taken by the cluster itself here.
	t.Run("SIGTERM", func(t *testing.T) {
		flags := gwArgs(t, env.Gateway, "tls", env.Key)
		args := append([]string{"exec", "prod"}, flags[:len(flags)-2]...)
		cmd := exec.Command(bin, append(args, "--", "sh", "-c", `trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done`)...)
		cmd.Env = cliEnv(t)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = writerFunc(func(p []byte) (int, error) { t.Logf("stderr: %s", p); return len(p), nil })
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		sc := bufio.NewScanner(stdout)
		if !sc.Scan() || sc.Text() != "ready" {
			t.Fatalf("first line %q, want ready", sc.Text())
		}
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if !sc.Scan() || sc.Text() != "got-term" {
			t.Fatalf("line %q, want got-term: the command did not get the SIGTERM", sc.Text())
		}
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 42 {
			t.Fatalf("cachetun exec: %v, want exit 42 (the command's)", err)
		}
	})
}

// TestConnect_JSON: 'connect cache sessions --json --local-port 0' prints
// one JSON line with both targets' endpoints once they work, on every
// transport; the ports it names answer.
func TestConnect_JSON(t *testing.T) {
	bin := cachetunBinary(t)
	forEachTransport(t, func(t *testing.T, transport string) {
		targets, r, m := threeTargets(t)
		k := newKey(t, "alice")
		g := startGateway(t, targets, []string{`targets="cache,sessions" ` + k.Line})
		args := append([]string{"connect", "cache", "sessions", "--json"}, gwArgs(t, g, transport, k)...)
		cmd := exec.Command(bin, args...)
		stdout := startCLI(t, cmd)
		lines := bufio.NewReader(stdout)
		line, err := lines.ReadString('\n')
		if err != nil {
			t.Fatalf("read the first JSON line: %v", err)
		}
		var ev client.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("first line %q: %v", line, err)
		}
		if ev.Kind != "up" || len(ev.Targets) != 2 || ev.Targets[0].Name != "cache" || ev.Targets[1].Name != "sessions" ||
			ev.Targets[0].Transport != transport || len(ev.Targets[0].Nodes) != 1 || ev.Targets[0].Nodes[0].Node != r.Addr {
			t.Fatalf("first line %s: want event up with targets cache (node %s) and sessions over %s", line, r.Addr, transport)
		}
		if got := redisCLI(t, ev.Targets[0].Nodes[0].Local, "PING"); got != "PONG" {
			t.Fatalf("PING through %s: %q", ev.Targets[0].Nodes[0].Local, got)
		}
		mcSet(t, ev.Targets[1].Nodes[0].Local, "k", "v")
		if got, ok := m.Get(t, "k"); !ok || got != "v" {
			t.Fatalf("memcached read directly: %q %v", got, ok)
		}
		if n := sessionStarts(t, g); n != 1 {
			t.Fatalf("%d sessions for one connect of two targets, want 1", n)
		}

		// The gateway goes away and comes back: one line each.
		g.Kill()
		next := func(want string) client.Event {
			t.Helper()
			for {
				line, err := lines.ReadString('\n')
				if err != nil {
					t.Fatalf("read a JSON line: %v (waiting for %s)", err, want)
				}
				var ev client.Event
				if err := json.Unmarshal([]byte(line), &ev); err != nil {
					t.Fatalf("line %q: %v", line, err)
				}
				if ev.Kind == want {
					return ev
				}
				if ev.Kind != "error" && ev.Kind != "topology" {
					t.Fatalf("line %s while waiting for %s", line, want)
				}
			}
		}
		if ev := next("reconnecting"); ev.Server != g.ServerAddr(transport) || ev.Error == "" {
			t.Fatalf("reconnecting event %+v: want the server and why", ev)
		}
		g.Restart(t)
		if re := next("reconnected"); len(re.Targets) != 2 || re.Targets[0].Nodes[0].Local != ev.Targets[0].Nodes[0].Local {
			t.Fatalf("reconnected event %+v: want both targets on the same ports", re)
		}
		if got := redisCLI(t, ev.Targets[0].Nodes[0].Local, "PING"); got != "PONG" {
			t.Fatalf("PING after the reconnect: %q", got)
		}
	})
}

// TestLs_CLI: 'cachetun ls --server' prints the targets the key may use
// (2 of 3) with type and node count; --json the same as JSON.
func TestLs_CLI(t *testing.T) {
	bin := cachetunBinary(t)
	r := testenv.StartRedis(t)
	k := newKey(t, "alice")
	g := startGateway(t, map[string]*server.Target{
		"cache":    {Type: server.TypeRedis, Nodes: []string{r.Addr}},
		"sessions": {Type: server.TypeMemcached, Nodes: []string{"127.0.0.1:11211", "127.0.0.1:11212"}},
		"secret":   {Type: server.TypeRedis, Nodes: []string{r.Addr}},
	}, []string{`targets="cache,sessions" ` + k.Line})
	forEachTransport(t, func(t *testing.T, transport string) {
		flags := gwArgs(t, g, transport, k)
		flags = flags[:len(flags)-2] // no --local-port
		ls := func(args ...string) *exec.Cmd {
			c := exec.Command(bin, append(args, flags...)...)
			c.Env = cliEnv(t)
			return c
		}
		out, err := ls("ls").CombinedOutput()
		if err != nil {
			t.Fatalf("ls: %v: %s", err, out)
		}
		want := "TARGET    TYPE       NODES\ncache     redis      1\nsessions  memcached  2\n"
		if string(out) != want {
			t.Fatalf("ls printed\n%s\nwant\n%s", out, want)
		}
		out, err = ls("ls", "--json").Output()
		if err != nil {
			t.Fatalf("ls --json: %v", err)
		}
		if got := strings.TrimSpace(string(out)); got != `[{"name":"cache","type":"redis","nodes":1},{"name":"sessions","type":"memcached","nodes":2}]` {
			t.Fatalf("ls --json: %s", got)
		}
	})
}

// doctor runs 'cachetun doctor' and returns its stdout and exit code.
func doctor(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, cachetunBinary(t), append([]string{"doctor"}, args...)...)
	cmd.Env = cliEnv(t)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	t.Logf("doctor %v: exit %d\n%s%s", args, code, out.String(), errb.String())
	return out.String(), code
}

// statusOf returns the status word of the first report line of check.
func statusOf(out, check string) string {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[1] == check {
			return f[0]
		}
	}
	return ""
}

// TestDoctor: all ok (exit 0, PONG from the redis node and VERSION from
// both memcached nodes through the gateway); a missing known_hosts entry
// (FAIL, exit 1, authentication skipped); a gateway without QUIC (warn
// 'UDP seems blocked on this network: tls will be used', exit 0).
func TestDoctor(t *testing.T) {
	r := testenv.StartRedis(t)
	m1, m2 := testenv.StartMemcached(t), testenv.StartMemcached(t)
	k := newKey(t, "alice")
	targets := map[string]*server.Target{
		"cache":    {Type: server.TypeRedis, Nodes: []string{r.Addr}},
		"sessions": {Type: server.TypeMemcached, Nodes: []string{m1.Addr, m2.Addr}},
	}
	g := startGateway(t, targets, []string{k.Line})
	base := func(g *gateway, kh string) []string {
		return []string{"--server", g.Addr, "-i", k.Path, "--known-hosts", kh}
	}

	t.Run("AllOK", func(t *testing.T) {
		out, code := doctor(t, append([]string{"cache"}, base(g, g.KnownHosts(t))...)...)
		if code != 0 || strings.Contains(out, "FAIL") {
			t.Fatalf("exit %d, want 0 and no FAIL line", code)
		}
		for _, c := range []string{"config", "key", "agent", "known_hosts", "dns", "quic", "tls", "authentication", "target", "node"} {
			if s := statusOf(out, c); s != "ok" {
				t.Errorf("check %s: status %q, want ok", c, s)
			}
		}
		if !strings.Contains(out, r.Addr+": +PONG in ") {
			t.Errorf("no PONG from %s", r.Addr)
		}
		out, code = doctor(t, append([]string{"sessions", "--json"}, base(g, g.KnownHosts(t))...)...)
		if code != 0 {
			t.Fatalf("sessions: exit %d, want 0", code)
		}
		var nodes int
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			var cr struct{ Check, Status, Detail string }
			if err := json.Unmarshal([]byte(l), &cr); err != nil {
				t.Fatalf("--json line %q: %v", l, err)
			}
			if cr.Check == "node" && cr.Status == "ok" && strings.Contains(cr.Detail, "VERSION ") {
				nodes++
			}
		}
		if nodes != 2 {
			t.Fatalf("%d memcached nodes answered version, want 2", nodes)
		}
		// doctor's probes end as a connection does (half-close, then the
		// cache's end): the gateway counts each as result=ok, not as a
		// reset by the client.
		waitFor(t, 10*time.Second, "the gateway to count 3 streams for doctor's probes", func() bool {
			return gatewayMetric(t, g, "cachetun_streams_total", nil) >= 3
		})
		ms := gatewayMetrics(t, g) // one reading for both numbers
		all, _ := ms.value("cachetun_streams_total", nil)
		if ok, _ := ms.value("cachetun_streams_total", map[string]string{"result": "ok"}); all != ok {
			t.Errorf("%v of doctor's %v probe streams did not end cleanly: %s", all-ok, all, ms.labelSets("cachetun_streams_total"))
		}
	})

	t.Run("NoKnownHostsEntry", func(t *testing.T) {
		empty := filepath.Join(t.TempDir(), "known_hosts")
		if err := os.WriteFile(empty, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		out, code := doctor(t, append([]string{"cache"}, base(g, empty)...)...)
		if code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
		if statusOf(out, "known_hosts") != "FAIL" || !strings.Contains(out, "has no entry for "+g.Addr) || !strings.Contains(out, "--accept-new-host-key") {
			t.Fatalf("want a FAIL known_hosts line naming %s and the fix", g.Addr)
		}
		if statusOf(out, "tls") != "ok" || statusOf(out, "authentication") != "skip" {
			t.Fatalf("tls %q, authentication %q: want ok (reachable) and skip", statusOf(out, "tls"), statusOf(out, "authentication"))
		}
		// The fingerprint to compare with the operator's is shown.
		if fp := ssh.FingerprintSHA256(g.HostKey); !strings.Contains(out, fp) {
			t.Fatalf("doctor does not show the gateway's host key fingerprint %s:\n%s", fp, out)
		}
	})

	t.Run("QUICBlocked", func(t *testing.T) {
		g2 := startGateway(t, targets, []string{k.Line}, withoutQUIC)
		out, code := doctor(t, append([]string{"cache"}, base(g2, g2.KnownHosts(t))...)...)
		if code != 0 {
			t.Fatalf("exit %d, want 0: tls works", code)
		}
		if statusOf(out, "quic") != "warn" || !strings.Contains(out, "UDP seems blocked on this network: tls will be used") {
			t.Fatal("want a warn line for quic saying tls will be used")
		}
		if statusOf(out, "authentication") != "ok" || !strings.Contains(out, "over tls") || statusOf(out, "node") != "ok" {
			t.Fatal("want authentication ok over tls and the node ok")
		}
	})
}

// TestConnect_TwoGateways: profiles on two gateways make one session to
// each (one "session start" on each gateway) and one --json up line with
// every target, each naming its own gateway.
func TestConnect_TwoGateways(t *testing.T) {
	bin := cachetunBinary(t)
	r1, r2 := testenv.StartRedis(t), testenv.StartRedis(t)
	k := newKey(t, "alice")
	g1 := startGateway(t, map[string]*server.Target{"east": {Type: server.TypeRedis, Nodes: []string{r1.Addr}}}, []string{k.Line})
	g2 := startGateway(t, map[string]*server.Target{"west": {Type: server.TypeRedis, Nodes: []string{r2.Addr}}}, []string{k.Line})
	dir := t.TempDir()
	kh := filepath.Join(dir, "known_hosts")
	a, _ := os.ReadFile(g1.KnownHosts(t))
	b, _ := os.ReadFile(g2.KnownHosts(t))
	if err := os.WriteFile(kh, append(a, b...), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	yaml := "known_hosts: " + kh + "\nprofiles:\n" +
		"  east:\n    server: " + g1.Addr + "\n    transport: tls\n    identity: " + k.Path + "\n    local_port: 0\n" +
		"  west:\n    server: " + g2.Addr + "\n    transport: quic\n    identity: " + k.Path + "\n    local_port: 0\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "connect", "east", "west", "--config", cfg, "--json")
	stdout := startCLI(t, cmd)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("read the first JSON line: %v", err)
	}
	var ev client.Event
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatalf("first line %q: %v", line, err)
	}
	if len(ev.Targets) != 2 || ev.Targets[0].Name != "east" || ev.Targets[0].Server != g1.Addr || ev.Targets[0].Transport != "tls" ||
		ev.Targets[1].Name != "west" || ev.Targets[1].Server != g2.Addr || ev.Targets[1].Transport != "quic" {
		t.Fatalf("up line %s: want east on %s over tls and west on %s over quic", line, g1.Addr, g2.Addr)
	}
	for i, want := range []string{"east", "west"} {
		local := ev.Targets[i].Nodes[0].Local
		if got := redisCLI(t, local, "SET", "k", want); got != "OK" {
			t.Fatalf("SET through %s: %q", want, got)
		}
	}
	if got := r1.Client(t).Get(context.Background(), "k").Val(); got != "east" {
		t.Fatalf("east's redis holds %q", got)
	}
	if got := r2.Client(t).Get(context.Background(), "k").Val(); got != "west" {
		t.Fatalf("west's redis holds %q", got)
	}
	if n1, n2 := sessionStarts(t, g1), sessionStarts(t, g2); n1 != 1 || n2 != 1 {
		t.Fatalf("sessions: %d on east's gateway, %d on west's, want 1 each", n1, n2)
	}
}

// TestConnect_JSONTopology: after a CLUSTER FAILOVER in a real cluster,
// connect --json prints a topology line naming the target, in which the
// promoted replica is a master on the port it already had.
func TestConnect_JSONTopology(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 6-node cluster")
	}
	bin := cachetunBinary(t)
	cl := testenv.StartCluster(t, 3, 1)
	k := newKey(t, "dev@laptop")
	g := startGateway(t, map[string]*server.Target{
		"prod": {Type: server.TypeRedisCluster, Nodes: []string{cl.Nodes[0].Addr}, Refresh: time.Second, Networks: loopbackNetworks},
	}, []string{k.Line})
	cmd := exec.Command(bin, append([]string{"connect", "prod", "--json"}, gwArgs(t, g, "quic", k)...)...)
	stdout := startCLI(t, cmd)
	events := make(chan client.Event, 16)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev client.Event
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				events <- ev
			}
		}
	}()
	next := func(kind string) client.Event {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("connect ended before a %s line", kind)
				}
				if ev.Kind == kind {
					return ev
				}
			case <-timeout:
				t.Fatalf("no %s line within 30s", kind)
			}
		}
	}
	roleOf := func(ev client.Event, node string) (role, local string) {
		for _, n := range ev.Targets[0].Nodes {
			if n.Node == node {
				return n.Role, n.Local
			}
		}
		return "", ""
	}
	up := next("up")
	master := cl.MasterForSlot(t, 0)
	replica := cl.Replicas(t, master)[0]
	role, local := roleOf(up, replica.Addr)
	if len(up.Targets[0].Nodes) != 6 || role != "replica" {
		t.Fatalf("up line: %d nodes, %s is %q; want 6 and replica", len(up.Targets[0].Nodes), replica.Addr, role)
	}
	cl.Failover(t, replica)
	for {
		ev := next("topology")
		if ev.Target != "prod" {
			t.Fatalf("topology line names target %q, want prod", ev.Target)
		}
		if r, l := roleOf(ev, replica.Addr); r == "master" {
			if l != local {
				t.Fatalf("the promoted replica moved from %s to %s", local, l)
			}
			break
		}
	}
}

// startCLI starts cmd (a cachetun command) with the test's CLI environment,
// its stderr in the test log, and returns its stdout; the command gets
// SIGINT and is waited for when the test ends.
func startCLI(t *testing.T, cmd *exec.Cmd) io.Reader {
	t.Helper()
	cmd.Env = cliEnv(t)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = writerFunc(func(p []byte) (int, error) { t.Logf("stderr: %s", p); return len(p), nil })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() })
	return stdout
}
