package test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/test/testenv"
)

// redisTargetYAML is the server.yaml flow mapping of a redis target.
func redisTargetYAML(r *testenv.Redis) string {
	return fmt.Sprintf("{type: redis, nodes: [%q]}", r.Addr)
}

// redisPingOn sends PING on an open connection to a redis through the tunnel
// and returns the reply line, or the error.
func redisPingOn(c net.Conn, br *bufio.Reader) (string, error) {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return "", err
	}
	line, err := br.ReadString('\n')
	return strings.TrimSpace(line), err
}

// openPing opens a connection to addr and checks that PING gets PONG; the
// connection stays open for more.
func openPing(t testing.TB, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	br := bufio.NewReader(c)
	if got, err := redisPingOn(c, br); err != nil || got != "+PONG" {
		t.Fatalf("PING via %s: %q, %v; want +PONG", addr, got, err)
	}
	return c, br
}

// pingFails reports whether a fresh connection to addr fails to PING.
func pingFails(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return true
	}
	defer c.Close()
	got, err := redisPingOn(c, bufio.NewReader(c))
	return err != nil || got != "+PONG"
}

// hasLine reports whether one line of log holds every part.
func hasLine(log string, parts ...string) bool {
next:
	for _, l := range strings.Split(log, "\n") {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		return true
	}
	return false
}

// TestReload_AddRemoveTarget runs the real gateway process. SIGHUP with a
// server.yaml that drops target "a" and adds "b": the live streams to "a"
// (a cachetun client's over TLS, a stock OpenSSH client's) end within 5 s;
// the OpenSSH session that stays up reaches "b" at once on a new channel,
// and a `connect --all` session gets b's topology pushed and reaches it,
// neither reconnecting; the cachetun session of "a" alone ends saying the
// target was removed; a new cachetun session to "b" works; the process is
// the same (no restart).
func TestReload_AddRemoveTarget(t *testing.T) {
	ra, rb := testenv.StartRedis(t), testenv.StartRedis(t)
	k := newKey(t, "ops@laptop")
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := mln.Addr().String()
	mln.Close()
	opts := gatewayProcOpts{
		Targets:    map[string]string{"a": redisTargetYAML(ra)},
		Authorized: []string{k.Line},
		Extra:      fmt.Sprintf("metrics: %q\n", metricsAddr),
	}
	g := startGatewayProc(t, opts)
	pid := g.PID()

	// Live streams to "a": cachetun over TLS, and OpenSSH with forwards to
	// both a and b (b not configured yet).
	ca := mustConnect(t, g, "tls", "a", k)
	// A `connect --all` session: it has only a for now.
	call := mustConnect(t, g, "quic", "", k, func(o *client.Options) { o.Target, o.Profile, o.All = "", "", true })
	openPing(t, call.Local(t, ra.Addr))
	connA, _ := openPing(t, ca.Local(t, ra.Addr))
	osh := sshTestStartOpenSSH(t, k.Path, g.KnownHosts(t), g.SSHAddr, "a:6379", "b:6379")
	select {
	case <-osh.exited:
		t.Fatalf("ssh exited: %v\n%s", osh.err, osh.Stderr())
	default:
	}
	sshA, _ := openPing(t, osh.Locals[0])
	if !pingFails(osh.Locals[1]) {
		t.Fatal("target b reachable before it is configured")
	}

	opts.Targets = map[string]string{"b": redisTargetYAML(rb)}
	g.WriteConfig(t, opts)
	hup := time.Now()
	out := g.Reload(t)
	if !strings.Contains(out, "reloaded server.yaml and authorized_keys") {
		t.Fatalf("reload log:\n%s", out)
	}
	for _, want := range [][]string{{`msg="reload: target added"`, "target=b"}, {`msg="reload: target removed`, "target=a"}} {
		if !hasLine(out, want...) {
			t.Errorf("reload log has no line with %q:\n%s", want, out)
		}
	}

	d1 := waitClosed(t, connA, hup, 2*time.Second)
	d2 := waitClosed(t, sshA, hup, 2*time.Second)
	t.Logf("streams to the removed target closed %s (cachetun, tls) and %s (OpenSSH) after SIGHUP (bound 2 s)", d1.Round(time.Millisecond), d2.Round(time.Millisecond))

	// The same OpenSSH session reaches the new target, and no longer the old one.
	select {
	case <-osh.exited:
		t.Fatalf("the OpenSSH session ended with the reload: %v\n%s", osh.err, osh.Stderr())
	default:
	}
	openPing(t, osh.Locals[1])
	if !pingFails(osh.Locals[0]) {
		t.Error("removed target a still reachable on the OpenSSH session")
	}
	// The --all session got b on its control stream, without reconnecting.
	waitFor(t, 5*time.Second, "the --all client to open a port for b", func() bool {
		_, ok := call.Client.LocalAddrs()[rb.Addr]
		return ok
	})
	openPing(t, call.Local(t, rb.Addr))
	select {
	case err := <-call.Err:
		t.Fatalf("the --all client stopped: %v", errText(err))
	default:
	}
	if !hasLine(g.Log(), "target added by a reload: topology sent", "target=b") {
		t.Error("no topology push of b to the --all session in the log")
	}
	// A new cachetun session to b.
	cb := mustConnect(t, g, "quic", "b", k)
	openPing(t, cb.Local(t, rb.Addr))
	if g.PID() != pid {
		t.Fatalf("gateway pid %d, was %d: it restarted", g.PID(), pid)
	}
	// The cut streams count as target_removed.
	waitFor(t, 5*time.Second, "cachetun_streams_total{target=a,result=target_removed} >= 3", func() bool {
		v, _ := scrape(t, "http://"+metricsAddr).value("cachetun_streams_total", map[string]string{"target": "a", "result": "target_removed"})
		return v >= 3 // the tls client's, the --all client's and OpenSSH's
	})
	// The cachetun session of a ended, saying why.
	if !hasLine(g.Log(), `msg="session end"`, "target=a", "result=revoked", "reason=target_removed") {
		t.Errorf("no session end line for a with result=revoked reason=target_removed")
	}
	select {
	case err := <-ca.Err:
		ca.Err <- err // for the cleanup, which waits for it
		if msg := errText(err); !strings.Contains(msg, `target \"a\" was removed`) && !strings.Contains(msg, `target "a" was removed`) {
			t.Errorf("client of the removed target: %q, want it to say the target was removed", msg)
		}
	case <-time.After(5 * time.Second):
		t.Error("the client of the removed target still runs 5 s after the reload")
	}
}

// TestReload_BadFileKeepsConfig runs the real gateway process. A
// server.yaml that does not validate, and then a valid one beside an
// authorized_keys that does not load, are each refused whole: an ERROR line
// names the file and line, the running targets and keys stay, the target
// the bad files would add is not served, and cachetun_config_reloads_total
// counts the errors. A good reload then applies a changed limit to the next
// session, and a changed listen address and host key are logged as needing
// a restart (the SSH listener still shows the running host key).
func TestReload_BadFileKeepsConfig(t *testing.T) {
	ra, rb := testenv.StartRedis(t), testenv.StartRedis(t)
	k := newKey(t, "ops@laptop")
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := mln.Addr().String()
	mln.Close()
	opts := gatewayProcOpts{
		Targets:    map[string]string{"a": redisTargetYAML(ra)},
		Authorized: []string{k.Line},
		Extra:      fmt.Sprintf("metrics: %q\n", metricsAddr),
	}
	g := startGatewayProc(t, opts)
	base := "http://" + metricsAddr
	ca := mustConnect(t, g, "tls", "a", k)
	connA, brA := openPing(t, ca.Local(t, ra.Addr))

	// 1. server.yaml: target b with a node that is not host:port.
	bad := opts
	bad.Targets = map[string]string{"a": redisTargetYAML(ra), "b": `{type: redis, nodes: ["no-port-here"]}`}
	g.WriteConfig(t, bad)
	data, err := os.ReadFile(g.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	line := 0
	for i, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "no-port-here") {
			line = i + 1
		}
	}
	out := g.Reload(t)
	wantWhere := fmt.Sprintf("%s:%d: targets.b.nodes[0]", g.ConfigPath, line)
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, wantWhere) || strings.Contains(out, "reloaded server.yaml") {
		t.Fatalf("reload of a bad server.yaml: want one ERROR naming %q, got:\n%s", wantWhere, out)
	}
	t.Logf("bad server.yaml: %s", strings.TrimSpace(out))

	// 2. A valid server.yaml adding b, but authorized_keys with an option
	// that does not exist: neither file is taken.
	good := opts
	good.Targets = map[string]string{"a": redisTargetYAML(ra), "b": redisTargetYAML(rb)}
	g.WriteConfig(t, good)
	g.WriteAuthorizedKeys(t, []string{k.Line, "no-such-option " + newKey(t, "other").Line})
	out = g.Reload(t)
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, g.AuthorizedKeysPath+":2:") {
		t.Fatalf("reload with a bad authorized_keys: want an ERROR naming the file and line 2, got:\n%s", out)
	}
	t.Logf("bad authorized_keys: %s", strings.TrimSpace(out))

	// The old configuration runs on: the live stream, a new session to a;
	// b is not served.
	if got, err := redisPingOn(connA, brA); err != nil || got != "+PONG" {
		t.Fatalf("live stream after the failed reloads: %q %v", got, err)
	}
	c2 := mustConnect(t, g, "quic", "a", k)
	openPing(t, c2.Local(t, ra.Addr))
	if _, err := startConnect(t, g, "tls", "b", k); err == nil || !strings.Contains(errText(err), "not configured") {
		t.Fatalf("target b of the refused files: connect gave %v, want not configured", errText(err))
	}
	ms := scrape(t, base)
	if v, _ := ms.value("cachetun_config_reloads_total", map[string]string{"result": "error"}); v != 2 {
		t.Errorf("cachetun_config_reloads_total{result=error} = %g, want 2", v)
	}

	// 3. Good files, with max_sessions_per_key 2 and another SSH address:
	// b is served, the key (2 sessions open) gets no third session, and the
	// address change waits for a restart.
	g.WriteAuthorizedKeys(t, []string{k.Line})
	good.Limits = map[string]string{"max_sessions_per_key": "2"}
	g.WriteConfig(t, good)
	data, _ = os.ReadFile(g.ConfigPath)
	newSSH := freeTCPUDPPort(t)
	newHostKey := filepath.Join(t.TempDir(), "host_ed25519")
	if _, err := auth.GenerateKey(newHostKey, "new-host"); err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(data), fmt.Sprintf("ssh: %q", g.SSHAddr), fmt.Sprintf("ssh: %q", newSSH), 1)
	edited = strings.Replace(edited, "host_key: "+g.HostKeyPath, "host_key: "+newHostKey, 1)
	if err := os.WriteFile(g.ConfigPath, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	out = g.Reload(t)
	for _, want := range []string{"reloaded server.yaml and authorized_keys", "listen.ssh changed: restart the gateway", "host_key changed: restart the gateway"} {
		if !strings.Contains(out, want) {
			t.Fatalf("good reload: want %q, got:\n%s", want, out)
		}
	}
	// The running host key stays: the SSH listener still shows the old one.
	var shown ssh.PublicKey
	_, _ = ssh.Dial("tcp", g.SSHAddr, &ssh.ClientConfig{User: "probe", Timeout: 5 * time.Second,
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			shown = key
			return errors.New("probe only")
		}})
	if shown == nil || string(shown.Marshal()) != string(g.HostKey.Marshal()) {
		t.Fatalf("after a reload naming another host key the gateway shows %v, want the running one", shown)
	}
	if _, err := startConnect(t, g, "tls", "b", k); err == nil || !strings.Contains(errText(err), "already has 2 sessions") {
		t.Fatalf("third session of the key after max_sessions_per_key: 2: %v", errText(err))
	} else if !errors.Is(err, client.ErrSessionLimit) || errors.Is(err, client.ErrAuthFailed) {
		// The key was accepted: the error is the limit, not authentication.
		t.Errorf("session limit refusal: err = %v, want client.ErrSessionLimit and not ErrAuthFailed", err)
	} else if !strings.Contains(errText(err), "ask the gateway's operator to raise limits.max_sessions_per_key") {
		// The limit is the operator's: the laptop user is told to ask.
		t.Errorf("session limit hint does not send the user to the operator: %v", errText(err))
	}
	ca.cancel() // frees one of the key's two sessions
	waitFor(t, 10*time.Second, "a session to b once the key has one free", func() bool {
		c, err := startConnect(t, g, "tls", "b", k)
		if err != nil {
			return false
		}
		openPing(t, c.Local(t, rb.Addr))
		return true
	})
	ms = scrape(t, base)
	if v, _ := ms.value("cachetun_config_reloads_total", map[string]string{"result": "ok"}); v != 1 {
		t.Errorf("cachetun_config_reloads_total{result=ok} = %g, want 1", v)
	}
}

// TestReload_ChangedTargetMovesSession runs the real gateway process. A
// reload that changes target a's node from one redis-server to another:
// the live stream to the old node is cut, the client's session (not a new
// one) gets the new topology on its control stream, opens a local port for
// the new node and reaches it.
func TestReload_ChangedTargetMovesSession(t *testing.T) {
	r1, r2 := testenv.StartRedis(t), testenv.StartRedis(t)
	k := newKey(t, "ops@laptop")
	opts := gatewayProcOpts{Targets: map[string]string{"a": redisTargetYAML(r1)}, Authorized: []string{k.Line}}
	g := startGatewayProc(t, opts)
	c := mustConnect(t, g, "tls", "a", k)
	conn1, _ := openPing(t, c.Local(t, r1.Addr))

	opts.Targets = map[string]string{"a": redisTargetYAML(r2)}
	g.WriteConfig(t, opts)
	hup := time.Now()
	out := g.Reload(t)
	if !hasLine(out, `msg="reload: target changed`, "target=a") {
		t.Fatalf("reload log:\n%s", out)
	}
	d := waitClosed(t, conn1, hup, 2*time.Second)
	t.Logf("stream to the old node closed %s after SIGHUP (bound 2 s)", d.Round(time.Millisecond))
	waitFor(t, 5*time.Second, "a local port for the new node", func() bool {
		_, ok := c.Client.LocalAddrs()[r2.Addr]
		return ok
	})
	openPing(t, c.Local(t, r2.Addr))
	if n := strings.Count(g.Log(), `msg="session start"`); n != 1 {
		t.Errorf("%d sessions started, want 1: the client reconnected", n)
	}
	if !hasLine(g.Log(), "target changed by a reload: new topology sent", "target=a") {
		t.Error("no topology push logged for the live session")
	}
}
