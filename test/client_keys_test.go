package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/test/testenv"
)

// TestClientKeys_ExpiredAgentKeyFirst: a real ssh-agent holds an expired
// key first and a valid one second. On every transport the client moves on
// after the expiry refusal and connects with the second key (before, QUIC
// and TLS stopped at the first refusal that was not "unknown key").
func TestClientKeys_ExpiredAgentKeyFirst(t *testing.T) {
	testenv.RequireBinary(t, "ssh-keygen")
	r := testenv.StartRedis(t)
	expired := sshTestNewKey(t, "ed25519", "old@laptop")
	valid := sshTestNewKey(t, "ed25519", "new@laptop")
	sock := sshTestStartAgent(t)
	sshTestAgentAdd(t, sock, expired.Path) // listed first
	sshTestAgentAdd(t, sock, valid.Path)
	t.Setenv("SSH_AUTH_SOCK", sock)
	t.Setenv("HOME", t.TempDir()) // no ~/.ssh key files
	g := startGateway(t, redisTarget(r), []string{`expiry-time="20200101" ` + expired.Line, valid.Line})
	forEachTransport(t, func(t *testing.T, transport string) {
		c := mustConnect(t, g, transport, "cache", key{})
		if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
			t.Fatalf("PING through %s: %q", transport, got)
		}
		g.Log.waitLog(t, "key_comment=new@laptop")
	})
}

// TestClientKeys_EveryKeyRefused: when the gateway refuses every key, the
// error names each key tried with the gateway's reason, and the hint says
// that renewing an expired key is the operator's job.
func TestClientKeys_EveryKeyRefused(t *testing.T) {
	testenv.RequireBinary(t, "ssh-keygen")
	r := testenv.StartRedis(t)
	expired := sshTestNewKey(t, "ed25519", "old@laptop")
	unknown := sshTestNewKey(t, "ecdsa", "other@laptop")
	sock := sshTestStartAgent(t)
	sshTestAgentAdd(t, sock, expired.Path, unknown.Path)
	t.Setenv("SSH_AUTH_SOCK", sock)
	t.Setenv("HOME", t.TempDir())
	g := startGateway(t, redisTarget(r), []string{`expiry-time="20200101" ` + expired.Line})
	for _, transport := range []string{"quic", "tls"} {
		t.Run(transport, func(t *testing.T) {
			_, err := startConnect(t, g, transport, "cache", key{})
			if !errors.Is(err, client.ErrAuthFailed) {
				t.Fatalf("err = %v, want ErrAuthFailed", err)
			}
			text := errText(err)
			t.Logf("the user sees:\n%s", text)
			for _, want := range []string{
				"the gateway refused 2 key(s)",
				"ssh-agent (ED25519 " + auth.Fingerprint(expired.Pub) + "): ",
				"expired at 2020-01-01",
				"ssh-agent (ECDSA " + auth.Fingerprint(unknown.Pub) + "): ",
				"hint: ",
				"only be renewed by the gateway's operator",
				"ask the gateway's operator to add your public key",
			} {
				if !strings.Contains(text, want) {
					t.Errorf("error does not contain %q:\n%s", want, text)
				}
			}
			if strings.Contains(text, "renew it there") {
				t.Errorf("error tells the laptop user to renew the key:\n%s", text)
			}
		})
	}
}

// TestClientKeys_IdentityInAgent: -i names a passphrase-protected key file
// that the agent holds; the client signs with the agent's copy, with no
// prompt (there is no terminal here).
func TestClientKeys_IdentityInAgent(t *testing.T) {
	testenv.RequireBinary(t, "ssh-keygen")
	r := testenv.StartRedis(t)
	k := sshTestNewKey(t, "ed25519", "locked@laptop")
	sock := sshTestStartAgent(t)
	sshTestAgentAdd(t, sock, k.Path)
	sshTestKeygen(t, "-q", "-p", "-P", "", "-N", "secret passphrase", "-f", k.Path)
	t.Setenv("SSH_AUTH_SOCK", sock)
	t.Setenv("HOME", t.TempDir())
	g := startGateway(t, redisTarget(r), []string{k.Line})
	forEachTransport(t, func(t *testing.T, transport string) {
		c := mustConnect(t, g, transport, "cache", k) // -i the encrypted file
		if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
			t.Fatalf("PING through %s: %q", transport, got)
		}
	})

	// Without the agent the same -i is refused with the fix.
	t.Setenv("SSH_AUTH_SOCK", "")
	_, err := startConnect(t, g, "tls", "cache", k)
	if !errors.Is(err, auth.ErrPassphrase) || !strings.Contains(errText(err), "ssh-add") {
		t.Fatalf("err = %s, want the ssh-add hint", errText(err))
	}
}

// TestClientKeys_PassphrasePrompt: -i names a passphrase-protected key
// that no agent holds; on a terminal (a real pty from script(1), with
// echo on) connect asks for the passphrase, does not echo it, and
// connects.
func TestClientKeys_PassphrasePrompt(t *testing.T) {
	scriptBin := testenv.RequireBinary(t, "script")
	testenv.RequireBinary(t, "ssh-keygen")
	r := testenv.StartRedis(t)
	k := sshTestNewKey(t, "ed25519", "locked@laptop")
	const pass = "correct horse battery"
	sshTestKeygen(t, "-q", "-p", "-P", "", "-N", pass, "-f", k.Path)
	g := startGateway(t, redisTarget(r), []string{k.Line})
	bin := cachetunBinary(t)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	line := strings.Join([]string{bin, "connect", "cache", "--server", g.Addr, "--transport", "tls", "-i", k.Path,
		"--known-hosts", g.KnownHosts(t), "--local-port", "0"}, " ")
	cmd := exec.CommandContext(ctx, scriptBin, "-q", "-e", "-E", "always", "-c", line, "/dev/null")
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK=", "HOME="+t.TempDir())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out syncWriter
	out.w = new(bytes.Buffer)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	text := func() string {
		out.mu.Lock()
		defer out.mu.Unlock()
		return out.w.String()
	}
	waitFor(t, 15*time.Second, "passphrase prompt", func() bool {
		return strings.Contains(text(), `Enter passphrase for key "`+k.Path+`": `)
	})
	// Type only once the prompt has turned echo off, as a person would:
	// bytes written between the prompt and that moment are echoed by the
	// terminal itself, whatever connect does.
	waitFor(t, 15*time.Second, "echo off on connect's terminal", func() bool {
		return ttyEchoOff(t, cmd.Process.Pid)
	})
	if _, err := io.WriteString(stdin, pass+"\r"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "listener table", func() bool { return strings.Contains(text(), "via tls") })
	if strings.Contains(text(), pass) {
		t.Fatalf("the passphrase was echoed:\n%s", text())
	}
	t.Logf("terminal:\n%s", text())
}

// ttyEchoOff reports whether a child of script(1) process pid has a
// terminal on its standard input whose echo is off (stty -a says -echo).
func ttyEchoOff(t *testing.T, pid int) bool {
	t.Helper()
	kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, f := range strings.Fields(string(kids)) {
		dev, err := os.Readlink("/proc/" + f + "/fd/0")
		if err != nil || !strings.HasPrefix(dev, "/dev/pts/") {
			continue
		}
		out, err := exec.Command("stty", "-F", dev, "-a").Output()
		if err == nil && strings.Contains(" "+strings.Join(strings.Fields(string(out)), " ")+" ", " -echo ") {
			return true
		}
	}
	return false
}
