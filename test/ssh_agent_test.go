package test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachetun/cachetun/test/testenv"
)

// sshTestStartAgent runs a real `ssh-agent -D` on a socket of its own and
// returns the socket path. The agent is killed and reaped at cleanup, and
// at most lives two minutes.
func sshTestStartAgent(t testing.TB) string {
	t.Helper()
	bin := testenv.RequireBinary(t, "ssh-agent")
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := exec.CommandContext(ctx, bin, "-D", "-a", sock)
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start ssh-agent: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // this very process, by pid
		<-exited
		cancel()
	})
	waitFor(t, 10*time.Second, "ssh-agent socket", func() bool {
		c, err := net.Dial("unix", sock)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return sock
}

// sshTestAgentAdd loads private key files into the agent at sock.
func sshTestAgentAdd(t testing.TB, sock string, paths ...string) {
	t.Helper()
	bin := testenv.RequireBinary(t, "ssh-add")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, paths...)
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v\n%s", err, out)
	}
}

// TestSSH_AgentKeys: with no identity file, the client uses the keys of a
// real ssh-agent. ed25519, ECDSA and RSA keys each authenticate on every
// transport, the agent offering all three and the gateway knowing one.
func TestSSH_AgentKeys(t *testing.T) {
	testenv.RequireBinary(t, "ssh-keygen")
	r := testenv.StartRedis(t)
	keys := []key{
		sshTestNewKey(t, "ed25519", "agent-ed25519"),
		sshTestNewKey(t, "ecdsa", "agent-ecdsa"),
		sshTestNewKey(t, "rsa", "agent-rsa"),
	}
	sock := sshTestStartAgent(t)
	var paths []string
	for _, k := range keys {
		paths = append(paths, k.Path)
	}
	sshTestAgentAdd(t, sock, paths...)
	for _, p := range paths { // only the agent holds the keys now
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("SSH_AUTH_SOCK", sock)
	t.Setenv("HOME", t.TempDir()) // no ~/.ssh/id_ed25519 fallback

	for _, k := range keys {
		comment := k.Line[strings.LastIndexByte(k.Line, ' ')+1:]
		t.Run(comment, func(t *testing.T) {
			g := startGateway(t, redisTarget(r), []string{k.Line})
			forEachTransport(t, func(t *testing.T, transport string) {
				c := mustConnect(t, g, transport, "cache", key{}) // no -i: the agent
				if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
					t.Fatalf("PING through %s: %q", transport, got)
				}
				g.Log.waitLog(t, "transport="+transport)
				var started bool
				for _, l := range strings.Split(g.Log.String(), "\n") {
					if strings.Contains(l, `msg="session start"`) && strings.Contains(l, "transport="+transport) && strings.Contains(l, "key_comment="+comment) {
						started = true
					}
				}
				if !started {
					t.Fatalf("no session start with transport=%s and key %s in the gateway log", transport, comment)
				}
			})
		})
	}
}
