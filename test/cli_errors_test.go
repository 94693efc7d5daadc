package test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/test/testenv"
)

// cliRun is one run of the real cachetun binary.
type cliRun struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// runCLI runs the built cachetun binary with args, a HOME of its own, no
// ssh-agent, and at most 30 s.
func runCLI(t *testing.T, args ...string) cliRun {
	t.Helper()
	bin := cachetunBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "SSH_AUTH_SOCK=", "CACHETUN_TRANSPORT=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := cliRun{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run cachetun %v: %v", args, err)
	}
	t.Logf("cachetun %s\nexit %d after %s\nstdout:\n%sstderr:\n%s", strings.Join(args, " "), r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
	return r
}

// expect checks the exit code, that stdout is empty, and that stderr ends
// with exactly the error and hint lines given (regular expressions, each
// matching a whole line).
func (r cliRun) expect(t *testing.T, code int, errLine, hintLine string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit code %d, want %d", r.code, code)
	}
	if r.stdout != "" {
		t.Errorf("stdout %q, want nothing", r.stdout)
	}
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if len(lines) < 2 {
		t.Fatalf("stderr has %d lines, want the error and the hint:\n%s", len(lines), r.stderr)
	}
	for i, want := range []string{"cachetun: error: " + errLine, "cachetun: hint: " + hintLine} {
		got := lines[len(lines)-2+i]
		if !regexp.MustCompile("^" + want + "$").MatchString(got) {
			t.Errorf("stderr line\n got %s\nwant %s", got, want)
		}
	}
}

// TestCLIErrors_WrongPort: each transport pointed at the other's port, or
// at a Redis server, says which port is which, and fails within a stated
// bound instead of the 10 s dial timeout (11.5 s with the QUIC attempt).
func TestCLIErrors_WrongPort(t *testing.T) {
	if !hasSSH() {
		t.Skip("no ssh transport")
	}
	r := testenv.StartRedis(t)
	k := newKey(t, "alice@laptop")
	g := startGateway(t, redisTarget(r), []string{k.Line})
	kh := g.KnownHosts(t)
	// QUIC's 1.5 s before falling back to TLS, the 2 s before a stalled
	// handshake is probed, and slack for a loaded machine: well under the
	// 10 s dial timeout the user waited for before.
	const bound = 6 * time.Second
	cases := []struct {
		name      string
		args      []string
		err, hint string
	}{
		{"default transport at the ssh port", []string{"--server", g.SSHAddr},
			`tls 127\.0\.0\.1:\d+: not the port of this transport: it sent an SSH greeting, so this looks like the gateway's ssh port`,
			`use --transport ssh with this port, or the gateway's quic/tls port \(default 4433\) without it`},
		{"tls at the ssh port", []string{"--server", g.SSHAddr, "--transport", "tls"},
			`tls 127\.0\.0\.1:\d+: not the port of this transport: it sent an SSH greeting, so this looks like the gateway's ssh port`,
			`use --transport ssh with this port, or the gateway's quic/tls port \(default 4433\) without it`},
		{"ssh at the tls port", []string{"--server", g.Addr, "--transport", "ssh"},
			`ssh 127\.0\.0\.1:\d+: not the port of this transport: it closed the connection without an SSH greeting \(ssh: handshake failed: EOF\), so this looks like the gateway's quic/tls port`,
			`drop --transport ssh to use this port, or point --server at the gateway's ssh port \(default 2222\)`},
		{"default transport at a redis port", []string{"--server", r.Addr},
			`tls 127\.0\.0\.1:\d+: not a cachetun gateway port: it answers like a Redis or Valkey server`,
			`--server names the gateway \(quic/tls port default 4433, ssh 2222\), not the cache: the gateway knows the cache nodes`},
		{"quic at the ssh port", []string{"--server", g.SSHAddr, "--transport", "quic"},
			`quic 127\.0\.0\.1:\d+: not the port of this transport: it sent an SSH greeting, so this looks like the gateway's ssh port`,
			`use --transport ssh with this port, or the gateway's quic/tls port \(default 4433\) without it`},
		{"quic at a redis port", []string{"--server", r.Addr, "--transport", "quic"},
			`quic 127\.0\.0\.1:\d+: not a cachetun gateway port: it answers like a Redis or Valkey server`,
			`--server names the gateway \(quic/tls port default 4433, ssh 2222\), not the cache: the gateway knows the cache nodes`},
		{"ssh at a redis port", []string{"--server", r.Addr, "--transport", "ssh"},
			`ssh 127\.0\.0\.1:\d+: not a cachetun gateway port: it answers like a Redis or Valkey server`,
			`--server names the gateway \(quic/tls port default 4433, ssh 2222\), not the cache: the gateway knows the cache nodes`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"connect", "cache", "-i", k.Path, "--known-hosts", kh}, tc.args...)
			res := runCLI(t, args...)
			res.expect(t, 1, tc.err, tc.hint)
			if res.took > bound {
				t.Errorf("failed after %s, want within %s", res.took.Round(time.Millisecond), bound)
			}
		})
	}
}

// TestCLIErrors_UnknownTarget: a target the gateway does not have is
// worded as an unknown target, with the targets the key may use, on every
// transport (not "gateway refused authentication").
func TestCLIErrors_UnknownTarget(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "alice@laptop")
	g := startGateway(t, redisTarget(r), []string{k.Line})
	kh := g.KnownHosts(t)
	forEachTransport(t, func(t *testing.T, transport string) {
		res := runCLI(t, "connect", "sessions", "--server", g.ServerAddr(transport), "--transport", transport, "-i", k.Path, "--known-hosts", kh)
		res.expect(t, 1, `unknown target: target "sessions" is not configured on this gateway`,
			`check the target name; targets your key may use: \[cache\]`)
		if strings.Contains(res.stderr, "refused authentication") {
			t.Errorf("an unknown target is worded as an authentication failure")
		}
	})
}

// TestCLIErrors_Bind: --bind with an address this machine does not have
// names the address, not "another program uses that port". 192.0.2.1 is
// TEST-NET-1 (RFC 5737): bind(2) refuses it and no packet is sent.
func TestCLIErrors_Bind(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "alice@laptop")
	g := startGateway(t, redisTarget(r), []string{k.Line})
	res := runCLI(t, "connect", "cache", "--server", g.Addr, "--transport", "tls", "-i", k.Path, "--known-hosts", g.KnownHosts(t), "--bind", "192.0.2.1")
	res.expect(t, 1, `listen on 192\.0\.2\.1:\d+ for node 127\.0\.0\.1:\d+: listen tcp4 192\.0\.2\.1:\d+: bind: cannot assign requested address`,
		`192\.0\.2\.1 is not an address of this machine: pass --bind with one of its addresses, or leave --bind out for 127\.0\.0\.1`)
}

// TestCLIErrors_HostKey: the unknown-host error shows the SHA256
// fingerprint to compare with what 'server init' printed; with
// --accept-new-host-key the key is recorded and stderr says so, as ssh
// does.
func TestCLIErrors_HostKey(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "alice@laptop")
	g := startGateway(t, redisTarget(r), []string{k.Line})
	kh := filepath.Join(t.TempDir(), "known_hosts")
	fp := regexp.QuoteMeta(auth.Fingerprint(g.HostKey))
	res := runCLI(t, "connect", "cache", "--server", g.Addr, "--transport", "tls", "-i", k.Path, "--known-hosts", kh)
	res.expect(t, 1, `host key is not known for 127\.0\.0\.1:\d+: it presented ED25519 `+fp+`, and `+regexp.QuoteMeta(kh)+` has no entry for it`,
		`compare that fingerprint with the one 'cachetun server init' printed \(ask the gateway's operator\); if they match, run again with --accept-new-host-key`)
	if strings.Contains(res.stderr, "AAAA") {
		t.Errorf("the error prints the whole key line")
	}

	// Accepted: the line ssh prints, then the tunnel comes up. The client
	// runs until it is stopped, so start it with a deadline of its own.
	bin := cachetunBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "connect", "cache", "--server", g.Addr, "--transport", "tls", "-i", k.Path,
		"--known-hosts", kh, "--accept-new-host-key", "--local-port", "0")
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK=", "HOME="+t.TempDir())
	var out, errb syncWriter
	out.w, errb.w = new(bytes.Buffer), new(bytes.Buffer)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	waitFor(t, 15*time.Second, "listener table", func() bool {
		out.mu.Lock()
		defer out.mu.Unlock()
		return strings.Contains(out.w.String(), "via tls")
	})
	errb.mu.Lock()
	stderr := errb.w.String()
	errb.mu.Unlock()
	want := regexp.MustCompile(`(?m)^Permanently added '\[127\.0\.0\.1\]:\d+' \(ED25519 ` + fp + `\) to ` + regexp.QuoteMeta(kh) + `$`)
	if !want.MatchString(stderr) {
		t.Errorf("stderr does not say the key was added:\n%s", stderr)
	}
	data, err := os.ReadFile(kh)
	if err != nil || !strings.Contains(string(data), "ssh-ed25519 ") {
		t.Fatalf("known_hosts after accept: %q, %v", data, err)
	}
}
