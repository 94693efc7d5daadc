package test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/test/testenv"
)

// OpenSSH restrictions fail closed (issue 10, finding 6): authorized_keys
// options and certificate extensions reused from a bastion must never
// widen access. Each case runs against a real gateway with cachetun
// connect on every transport and with the stock OpenSSH client.

// assertRefusedWith fails unless err is a refusal whose text (with hint)
// contains every want.
func assertRefusedWith(t testing.TB, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("connect succeeded, want a refusal")
	}
	msg := errText(err)
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not mention %q", msg, w)
		}
	}
}

// assertStreamRefused: a connection to local gets no reply from redis (the
// gateway refused the stream), and redis r saw no new connection.
func assertStreamRefused(t testing.TB, local string, r *testenv.Redis) {
	t.Helper()
	n := r.TotalConnections(t)
	if out, err := redisCLIResult(t, local, "PING"); err == nil && strings.Contains(out, "PONG") {
		t.Fatalf("PING through a forward outside permitopen= was answered: %q", out)
	}
	if after := r.TotalConnections(t); after != n {
		t.Fatalf("redis %s saw %d connections for a refused stream", r.Addr, after-n)
	}
}

// TestSSH_AuthorizedKeysRestrictions: restrict and no-port-forwarding
// refuse the key with a reason (to the client and in the log) and no
// upstream connection; restrict,port-forwarding works; permitopen= allowing
// node 0 (by address, or as 0.cache) lets node 0 through and refuses node 1
// and 2; permitopen= naming only another target refuses the session's
// target.
func TestSSH_AuthorizedKeysRestrictions(t *testing.T) {
	rs, targets := sshTestThreeRedis(t)
	var (
		restricted = newKey(t, "restricted")
		noPF       = newKey(t, "no-pf")
		reenabled  = newKey(t, "reenabled")
		node0Addr  = newKey(t, "node0-addr")
		node0Index = newKey(t, "node0-index")
		otherOnly  = newKey(t, "other-only")
	)
	g := startGateway(t, targets, []string{
		`restrict,no-pty ` + restricted.Line,
		`no-port-forwarding,no-agent-forwarding ` + noPF.Line,
		`restrict,port-forwarding,no-pty ` + reenabled.Line,
		`restrict,port-forwarding,permitopen="` + rs[0].Addr + `" ` + node0Addr.Line,
		`permitopen="0.cache:*",permitopen="other:9" ` + node0Index.Line,
		`permitopen="other:*" ` + otherOnly.Line,
	})
	totals := func() (n int64) {
		for _, r := range rs {
			n += r.TotalConnections(t)
		}
		return n
	}

	forEachTransport(t, func(t *testing.T, transport string) {
		before := totals()
		_, err := startConnect(t, g, transport, "cache", restricted)
		assertRefusedWith(t, err, "is restricted (restrict) on line 1", "ask the operator")
		_, err = startConnect(t, g, transport, "cache", noPF)
		assertRefusedWith(t, err, "is restricted (no-port-forwarding) on line 2", "ask the operator")
		_, err = startConnect(t, g, transport, "cache", otherOnly)
		assertRefusedWith(t, err, `may open no node of target "cache"`, "permitopen")
		if after := totals(); after != before {
			t.Fatalf("redis saw %d connections for refused keys", after-before)
		}
		g.Log.waitLog(t, "is restricted (no-port-forwarding) on line 2")

		c := mustConnect(t, g, transport, "cache", reenabled)
		for _, r := range rs {
			if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
				t.Fatalf("restrict,port-forwarding: PING %s: %q", r.Addr, got)
			}
		}

		for _, k := range []key{node0Addr, node0Index} {
			c := mustConnect(t, g, transport, "cache", k)
			if got := redisCLI(t, c.Local(t, rs[0].Addr), "PING"); got != "PONG" {
				t.Fatalf("%s: PING node 0: %q", k.Path, got)
			}
			assertStreamRefused(t, c.Local(t, rs[1].Addr), rs[1])
			assertStreamRefused(t, c.Local(t, rs[2].Addr), rs[2])
		}
		g.Log.waitLog(t, "may not open "+rs[1].Addr+" (node 1 of target")
	})

	t.Run("openssh", func(t *testing.T) {
		kh := g.KnownHosts(t)
		before := totals()
		for _, tc := range []struct {
			k    key
			want string
		}{
			{restricted, "restricted (restrict)"},
			{noPF, "restricted (no-port-forwarding)"},
		} {
			p := sshTestStartOpenSSH(t, tc.k.Path, kh, g.SSHAddr, "cache:6379")
			if err := p.waitExit(t); err == nil {
				t.Fatal("ssh with a restricted key exited 0")
			}
			if s := p.Stderr(); !strings.Contains(s, "Permission denied") || !strings.Contains(s, tc.want) {
				t.Fatalf("ssh stderr lacks Permission denied and %q:\n%s", tc.want, s)
			}
		}
		if after := totals(); after != before {
			t.Fatalf("redis saw %d connections for restricted keys", after-before)
		}

		p := sshTestStartOpenSSH(t, reenabled.Path, kh, g.SSHAddr, "cache:6379", "2.cache:6379")
		for i, local := range p.Locals {
			if got := redisCLI(t, local, "PING"); got != "PONG" {
				t.Fatalf("restrict,port-forwarding: PING through forward %d: %q\n%s", i, got, p.Stderr())
			}
		}

		// Node 0 named three ways is let through; node 1 and 2, named
		// as N.cache or by address, are refused.
		for _, k := range []key{node0Addr, node0Index} {
			p := sshTestStartOpenSSH(t, k.Path, kh, g.SSHAddr, "cache:6379", "0.cache:6379", rs[0].Addr, "1.cache:6379", rs[2].Addr)
			for i, local := range p.Locals[:3] {
				if got := redisCLI(t, local, "PING"); got != "PONG" {
					t.Fatalf("%s: PING node 0 through forward %d: %q\n%s", k.Path, i, got, p.Stderr())
				}
			}
			assertStreamRefused(t, p.Locals[3], rs[1])
			assertStreamRefused(t, p.Locals[4], rs[2])
			waitFor(t, 10*time.Second, "ssh to report the refused channel", func() bool {
				return strings.Contains(p.Stderr(), "permitopen")
			})
		}
	})
}

// sshTestCertWith signs a key for principals with ssh-keygen -s ca and the
// given extra options (-O ...).
func sshTestCertWith(t testing.TB, ca key, id, principals string, opts ...string) key {
	t.Helper()
	k := sshTestNewKey(t, "ed25519", id)
	args := []string{"-q", "-s", ca.Path, "-I", id, "-n", principals, "-V", "-5m:+1h"}
	for _, o := range opts {
		args = append(args, "-O", o)
	}
	sshTestKeygen(t, append(args, k.Path+".pub")...)
	return k
}

// TestSSH_CertificateRestrictions: a certificate from ssh-keygen -O clear
// or -O no-port-forwarding (no permit-port-forwarding), one with
// force-command and one whose source-address excludes 127.0.0.1 are
// refused with a message naming why, on every transport and over ssh -L; a
// normal certificate, one with -O clear -O permit-port-forwarding and one
// with source-address=127.0.0.0/8 work.
func TestSSH_CertificateRestrictions(t *testing.T) {
	r := testenv.StartRedis(t)
	ca := sshTestNewKey(t, "ed25519", "users-ca")
	normal := sshTestCertWith(t, ca, "normal", "cache")
	onlyPF := sshTestCertWith(t, ca, "only-pf", "cache", "clear", "permit-port-forwarding")
	cleared := sshTestCertWith(t, ca, "cleared", "cache", "clear")
	noPF := sshTestCertWith(t, ca, "no-pf", "cache", "no-port-forwarding")
	forced := sshTestCertWith(t, ca, "forced", "cache", "force-command=/bin/false")
	fromHere := sshTestCertWith(t, ca, "from-here", "cache", "source-address=127.0.0.0/8")
	fromElsewhere := sshTestCertWith(t, ca, "from-elsewhere", "cache", "source-address=10.0.0.0/8,192.0.2.7")
	g := startGateway(t, redisTarget(r), []string{`cert-authority ` + ca.Line})

	refusals := []struct {
		k    key
		want []string
	}{
		{cleared, []string{`"cleared"`, "permit-port-forwarding"}},
		{noPF, []string{`"no-pf"`, "permit-port-forwarding"}},
		{forced, []string{`"forced"`, "force-command"}},
		{fromElsewhere, []string{`"from-elsewhere"`, "10.0.0.0/8,192.0.2.7", "127.0.0.1"}},
	}
	forEachTransport(t, func(t *testing.T, transport string) {
		for _, k := range []key{normal, onlyPF, fromHere} {
			c := mustConnect(t, g, transport, "cache", k)
			if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
				t.Fatalf("%s: PING: %q", k.Path, got)
			}
		}
		n := r.TotalConnections(t)
		for _, tc := range refusals {
			_, err := startConnect(t, g, transport, "cache", tc.k)
			assertRefusedWith(t, err, tc.want...)
		}
		if after := r.TotalConnections(t); after != n {
			t.Fatalf("redis saw %d connections for refused certificates", after-n)
		}
	})

	t.Run("openssh", func(t *testing.T) {
		kh := g.KnownHosts(t)
		for _, k := range []key{normal, fromHere} {
			p := sshTestStartOpenSSH(t, k.Path, kh, g.SSHAddr, "cache:6379")
			if got := redisCLI(t, p.Locals[0], "PING"); got != "PONG" {
				t.Fatalf("PING through ssh -L with certificate %s: %q\n%s", k.Path, got, p.Stderr())
			}
		}
		n := r.TotalConnections(t)
		for _, tc := range refusals {
			p := sshTestStartOpenSSH(t, tc.k.Path, kh, g.SSHAddr, "cache:6379")
			if err := p.waitExit(t); err == nil {
				t.Fatalf("ssh with certificate %s exited 0", tc.k.Path)
			}
			s := p.Stderr()
			for _, w := range append([]string{"Permission denied"}, tc.want...) {
				if !strings.Contains(s, w) {
					t.Errorf("ssh stderr lacks %q:\n%s", w, s)
				}
			}
		}
		if after := r.TotalConnections(t); after != n {
			t.Fatalf("redis saw %d connections for refused certificates", after-n)
		}
	})
}

// TestGatewayProc_OptionsFailClosed: the line of finding 6,
// restrict,no-port-forwarding,permitopen="127.0.0.1:1",command="/bin/false",
// makes the real binary refuse the file: on SIGHUP the old file stays in
// force (its key still works, the new line's key is unknown) and the log
// names the line and command=; a fresh `cachetun server` and `cachetun
// server check` on that file exit 2 (a configuration error) naming them
// too, and no gateway comes up.
func TestGatewayProc_OptionsFailClosed(t *testing.T) {
	r := testenv.StartRedis(t)
	good, bad := newKey(t, "good"), newKey(t, "bastion")
	g := startGatewayProc(t, gatewayProcOpts{
		Targets:    map[string]string{"cache": `{type: redis, nodes: ["` + r.Addr + `"]}`},
		Authorized: []string{good.Line},
	})
	c := mustConnect(t, g, "tls", "cache", good)
	if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
		t.Fatalf("PING: %q", got)
	}

	finding := `restrict,no-port-forwarding,permitopen="127.0.0.1:1",command="/bin/false" ` + bad.Line
	g.WriteAuthorizedKeys(t, []string{good.Line, finding})
	out := g.Reload(t)
	for _, w := range []string{"keeping the running configuration", "authorized_keys:2:", "command="} {
		if !strings.Contains(out, w) {
			t.Errorf("reload log lacks %q:\n%s", w, out)
		}
	}
	forEachTransport(t, func(t *testing.T, transport string) {
		c := mustConnect(t, g, transport, "cache", good)
		if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
			t.Fatalf("old key after a failed reload: PING %q", got)
		}
		n := r.TotalConnections(t)
		if _, err := startConnect(t, g, transport, "cache", bad); !errors.Is(err, client.ErrAuthFailed) {
			t.Fatalf("key of the refused line: err = %v, want client.ErrAuthFailed", err)
		}
		if after := r.TotalConnections(t); after != n {
			t.Fatalf("redis saw %d connections for the refused line's key", after-n)
		}
	})

	// A fresh gateway refuses to start on the file, and server check
	// (what the unit runs before start and reload) refuses it.
	bin := cachetunBinary(t)
	for _, args := range [][]string{
		{"server", "--config", g.ConfigPath},
		{"server", "check", "--config", g.ConfigPath},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = os.Environ()
		outb, err := cmd.CombinedOutput()
		cancel()
		out := string(outb)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("cachetun %s: err = %v, want exit 2\n%s", strings.Join(args, " "), err, out)
		}
		for _, w := range []string{"authorized_keys:2:", "command="} {
			if !strings.Contains(out, w) {
				t.Errorf("cachetun %s output lacks %q:\n%s", strings.Join(args, " "), w, out)
			}
		}
		if strings.Contains(out, "gateway ready") {
			t.Errorf("cachetun %s came up on the refused file:\n%s", strings.Join(args, " "), out)
		}
	}
}

// pingConn opens a connection to addr and checks that redis answers PING
// on it; the connection stays open for the caller.
func pingConn(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := redisPing(c); err != nil {
		t.Fatalf("PING through %s: %v", addr, err)
	}
	return c
}

// assertCutWithin fails unless c is closed by the far end within d.
func assertCutWithin(t testing.TB, c net.Conn, d time.Duration) {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(d))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open %v after the reload", d)
	}
	if err == nil {
		t.Fatal("read data on a connection that should be cut")
	}
	t.Logf("connection cut %v after the reload (bound %v)", time.Since(start).Round(time.Millisecond), d)
}

// TestSSH_PermitOpenNarrowedOnReload: adding permitopen="0.cache:*" to a
// key's line and reloading cuts that key's live connection to node 1
// within 2 s, keeps its node 0 connection, and refuses a new node 1
// connection; on every transport and for ssh -L. Adding restrict then
// ends a cachetun session with a reason the client prints.
func TestSSH_PermitOpenNarrowedOnReload(t *testing.T) {
	rs, targets := sshTestThreeRedis(t)
	narrow := func(t *testing.T, g *gateway, k key) {
		t.Helper()
		if err := os.WriteFile(g.Config.AuthorizedKeys, []byte(`permitopen="0.cache:*" `+k.Line+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := g.Srv.ReloadKeys(); err != nil {
			t.Fatal(err)
		}
	}
	check := func(t *testing.T, node0, node1 net.Conn, newNode1 string) {
		t.Helper()
		assertCutWithin(t, node1, 2*time.Second)
		if err := redisPing(node0); err != nil {
			t.Fatalf("node 0 connection after narrowing to node 0: %v", err)
		}
		assertStreamRefused(t, newNode1, rs[1])
	}
	forEachTransport(t, func(t *testing.T, transport string) {
		k := newKey(t, "narrowed")
		g := startGateway(t, targets, []string{k.Line})
		c := mustConnect(t, g, transport, "cache", k)
		node0, node1 := pingConn(t, c.Local(t, rs[0].Addr)), pingConn(t, c.Local(t, rs[1].Addr))
		narrow(t, g, k)
		check(t, node0, node1, c.Local(t, rs[1].Addr))

		// restrict added to the line ends the session with the reason.
		if err := os.WriteFile(g.Config.AuthorizedKeys, []byte(`restrict `+k.Line+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := g.Srv.ReloadKeys(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-c.Err:
			c.Err <- err // for the cleanup
			if msg := errText(err); !strings.Contains(msg, "access revoked") || !strings.Contains(msg, "may no longer forward ports") {
				t.Fatalf("client error %q: want access revoked, naming the restriction", msg)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("client still running 2 s after restrict was added to its line")
		}
		assertCutWithin(t, node0, 2*time.Second)
	})
	t.Run("openssh", func(t *testing.T) {
		k := newKey(t, "narrowed")
		g := startGateway(t, targets, []string{k.Line})
		p := sshTestStartOpenSSH(t, k.Path, g.KnownHosts(t), g.SSHAddr, "cache:6379", "1.cache:6379")
		node0, node1 := pingConn(t, p.Locals[0]), pingConn(t, p.Locals[1])
		narrow(t, g, k)
		check(t, node0, node1, p.Locals[1])
	})
}

// TestConnect_AllAndListHonourPermitOpen: with permitopen= and no
// targets=, --all connects and a listing shows exactly the targets that
// permitopen= leaves a node of (2 of the gateway's 3), on every transport.
func TestConnect_AllAndListHonourPermitOpen(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		targets, r, _ := threeTargets(t)
		k := newKey(t, "alice")
		g := startGateway(t, targets, []string{`permitopen="cache:*",permitopen="sessions:*" ` + k.Line})
		c := mustConnect(t, g, transport, "", k, func(o *client.Options) {
			o.Target, o.Profile, o.All = "", "", true
		})
		var names []string
		for _, e := range c.Client.Endpoints() {
			names = append(names, e.Name)
		}
		if strings.Join(names, ",") != "cache,sessions" {
			t.Fatalf("--all connected %v, want [cache sessions]", names)
		}
		if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
			t.Fatalf("PING: %q", got)
		}

		cl, err := client.New(client.Options{Servers: []string{g.ServerAddr(transport)}, List: true, Transport: transport,
			Identity: k.Path, KnownHosts: g.KnownHosts(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		list, err := cl.List(ctx)
		if err != nil {
			t.Fatal(errText(err))
		}
		if len(list) != 2 || list[0].Name != "cache" || list[1].Name != "sessions" {
			t.Fatalf("list: %+v, want cache and sessions only", list)
		}
	})
}
