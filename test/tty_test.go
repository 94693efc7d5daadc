package test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// tmuxSession runs a command in a detached tmux session on a server of
// its own (-L), so the test never touches another tmux.
type tmuxSession struct {
	bin, sock, name string
}

func startTmux(t *testing.T, command string) *tmuxSession {
	t.Helper()
	bin, err := exec.LookPath("tmux")
	if err != nil {
		t.Skip("tmux is not installed (apt package tmux; .ci/run installs it): the live status test needs a terminal")
	}
	s := &tmuxSession{bin: bin, sock: fmt.Sprintf("cachetun-test-%d", time.Now().UnixNano()), name: "live"}
	// remain-on-exit keeps the pane, and so its last screen and exit
	// status, when the command ends.
	out, err := exec.Command(bin, "-L", s.sock, "-f", "/dev/null", "new-session", "-d", "-s", s.name, "-x", "160", "-y", "40", command).CombinedOutput()
	if err != nil {
		t.Skipf("tmux cannot start a session here (%v: %s): the live status test needs a terminal", err, out)
	}
	t.Cleanup(func() { _ = exec.Command(bin, "-L", s.sock, "kill-server").Run() })
	_ = exec.Command(bin, "-L", s.sock, "set-option", "-t", s.name, "remain-on-exit", "on").Run()
	return s
}

// screen is what the pane shows now.
func (s *tmuxSession) screen(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(s.bin, "-L", s.sock, "capture-pane", "-p", "-t", s.name).Output()
	if err != nil {
		return ""
	}
	return string(out)
}

// waitScreen waits until every pattern matches the screen at once.
func (s *tmuxSession) waitScreen(t *testing.T, timeout time.Duration, what string, patterns ...string) string {
	t.Helper()
	var res []*regexp.Regexp
	for _, p := range patterns {
		res = append(res, regexp.MustCompile(p))
	}
	deadline := time.Now().Add(timeout)
	for {
		sc := s.screen(t)
		ok := true
		for _, re := range res {
			if !re.MatchString(sc) {
				ok = false
				break
			}
		}
		if ok {
			return sc
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; the screen:\n%s", timeout, what, sc)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *tmuxSession) keys(t *testing.T, keys ...string) {
	t.Helper()
	if out, err := exec.Command(s.bin, append([]string{"-L", s.sock, "send-keys", "-t", s.name}, keys...)...).CombinedOutput(); err != nil {
		t.Fatalf("tmux send-keys: %v: %s", err, out)
	}
}

// TestConnect_LiveStatusTTY: on a terminal (a tmux pane), connect shows
// the endpoint table of a real 6-node Redis Cluster with the transport,
// "connected" and the open connection count (1 while a redis-cli holds a
// connection); after a CLUSTER FAILOVER the table is redrawn with the
// promoted replica as master and the old master as replica; Ctrl-C
// drains and exits 0.
func TestConnect_LiveStatusTTY(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 6-node cluster")
	}
	bin := cachetunBinary(t)
	cl := testenv.StartCluster(t, 3, 1)
	k := newKey(t, "dev@laptop")
	g := startGateway(t, map[string]*server.Target{
		"prod": {Type: server.TypeRedisCluster, Nodes: []string{cl.Nodes[0].Addr}, Refresh: time.Second, Networks: loopbackNetworks},
	}, []string{k.Line})
	home := t.TempDir()
	status := filepath.Join(t.TempDir(), "status")
	cmd := fmt.Sprintf("env HOME=%s XDG_CONFIG_HOME=%s/.config SSH_AUTH_SOCK= CACHETUN_TRANSPORT= TERM=xterm-256color %s connect prod --server %s --transport tls -i %s --known-hosts %s --local-port 0; echo $? > %s",
		home, home, bin, g.Addr, k.Path, g.KnownHosts(t), status)
	tm := startTmux(t, cmd)

	master := cl.MasterForSlot(t, 0)
	replica := cl.Replicas(t, master)[0]
	row := func(node, role string) string {
		return `(?m)^\s*127\.0\.0\.1:\d+\s+->\s+` + regexp.QuoteMeta(node) + `\s+` + role + `\b`
	}
	sc := tm.waitScreen(t, 30*time.Second, "the table of 6 nodes and the status line",
		`prod\s+redis-cluster\s+via tls `+regexp.QuoteMeta(g.Addr),
		row(master.Addr, "master"), row(replica.Addr, "replica"),
		`connected\s+tls\s+0 open connections`)
	if n := len(regexp.MustCompile(`(?m)->\s+127\.0\.0\.1:\d+\s+(master|replica)`).FindAllString(sc, -1)); n != 6 {
		t.Fatalf("%d node rows on the screen, want 6:\n%s", n, sc)
	}

	// An open connection is counted: a redis-cli that stays subscribed.
	local := regexp.MustCompile(`(?m)^\s*(127\.0\.0\.1:\d+)\s+->\s+` + regexp.QuoteMeta(master.Addr)).FindStringSubmatch(sc)[1]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	host, port, _ := strings.Cut(local, ":")
	sub := exec.CommandContext(ctx, testenv.RequireBinary(t, "redis-cli"), "-h", host, "-p", port, "SUBSCRIBE", "news")
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	tm.waitScreen(t, 10*time.Second, "1 open connection", `connected\s+tls\s+1 open connections`)
	_ = sub.Process.Kill()
	_ = sub.Wait()
	tm.waitScreen(t, 10*time.Second, "0 open connections after redis-cli quit", `connected\s+tls\s+0 open connections`)

	cl.Failover(t, replica)
	sc = tm.waitScreen(t, 30*time.Second, "the table redrawn after the failover",
		row(replica.Addr, "master"), row(master.Addr, "replica"), `topology of prod changed at`)
	t.Logf("after the failover:\n%s", sc)

	tm.keys(t, "C-c")
	waitFor(t, 15*time.Second, "connect to exit after Ctrl-C", func() bool {
		b, err := exec.Command("cat", status).Output()
		return err == nil && strings.TrimSpace(string(b)) != ""
	})
	if b, _ := exec.Command("cat", status).Output(); strings.TrimSpace(string(b)) != "0" {
		t.Fatalf("connect exited %s after Ctrl-C, want 0", b)
	}
}
