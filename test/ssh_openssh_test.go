package test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// Interoperability with the stock OpenSSH client: `ssh -N -L` through the
// gateway's SSH listener, as DESIGN.md promises.

// sshTestProc is a running /usr/bin/ssh.
type sshTestProc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex // guards the following
	stderr bytes.Buffer
	exited chan struct{} // closed when the process has exited
	err    error         // of Wait, set before exited is closed
	// Locals are the local forward addresses, in the order of the specs.
	Locals []string
}

func (p *sshTestProc) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// sshTestOpenSSHArgs returns the ssh options that isolate a test from the
// user's configuration, agent and known_hosts.
func sshTestOpenSSHArgs(keyPath, knownHosts, gwAddr string) []string {
	_, port, _ := net.SplitHostPort(gwAddr)
	return []string{
		"-F", "/dev/null", "-N", "-v",
		"-p", port, "-i", keyPath,
		"-o", "UserKnownHostsFile=" + knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none",
		"-o", "BatchMode=yes",
		"-o", "ExitOnForwardFailure=yes",
		"-o", "ConnectTimeout=10",
		"-o", "ControlMaster=no",
		"-o", "ControlPath=none",
	}
}

// sshTestStartOpenSSH runs `ssh -N -L 127.0.0.1:PORT:SPEC ...` with one
// forward per spec ("HOST:PORT") and waits until ssh reports every local
// listener, or exits. It returns the process either way; check exited.
// The process is killed and reaped at cleanup.
func sshTestStartOpenSSH(t testing.TB, keyPath, knownHosts, gwAddr string, specs ...string) *sshTestProc {
	t.Helper()
	bin := testenv.RequireBinary(t, "ssh")
	for attempt := 0; ; attempt++ {
		p := &sshTestProc{exited: make(chan struct{})}
		args := sshTestOpenSSHArgs(keyPath, knownHosts, gwAddr)
		for _, spec := range specs {
			// A port free a moment ago; ExitOnForwardFailure makes ssh
			// exit if someone took it meanwhile, and we try again.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			local := ln.Addr().String()
			ln.Close()
			p.Locals = append(p.Locals, local)
			args = append(args, "-L", local+":"+spec)
		}
		args = append(args, "127.0.0.1")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // bound
		p.cmd = exec.CommandContext(ctx, bin, args...)
		p.cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK=", "HOME="+t.TempDir())
		stderr, err := p.cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := p.cmd.Start(); err != nil {
			cancel()
			t.Fatalf("start ssh: %v", err)
		}
		// ssh -v logs "Local forwarding listening" before it binds; it
		// enters the session once every forward listens.
		listening := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(stderr)
			ready := false
			for sc.Scan() {
				p.mu.Lock()
				p.stderr.WriteString(sc.Text() + "\n")
				p.mu.Unlock()
				if !ready && strings.Contains(sc.Text(), "Entering interactive session") {
					ready = true
					close(listening)
				}
			}
			p.err = p.cmd.Wait()
			cancel()
			close(p.exited)
		}()
		t.Cleanup(func() {
			_ = p.cmd.Process.Kill() // this very process, by pid
			<-p.exited
		})
		select {
		case <-listening:
			return p
		case <-p.exited:
			if attempt < 3 && strings.Contains(p.Stderr(), "Address already in use") {
				continue
			}
			return p
		case <-time.After(30 * time.Second):
			t.Fatalf("ssh did not set up its forwards within 30s; stderr:\n%s", p.Stderr())
		}
	}
}

// waitExit waits for ssh to exit and returns its exit error.
func (p *sshTestProc) waitExit(t testing.TB) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(30 * time.Second):
		t.Fatalf("ssh still running after 30s; stderr:\n%s", p.Stderr())
		return nil
	}
}

// sshTestThreeRedis starts three redis-servers behind one "cache" target.
func sshTestThreeRedis(t testing.TB) ([]*testenv.Redis, map[string]*server.Target) {
	t.Helper()
	var rs []*testenv.Redis
	var addrs []string
	for i := 0; i < 3; i++ {
		r := testenv.StartRedis(t)
		rs = append(rs, r)
		addrs = append(addrs, r.Addr)
	}
	return rs, map[string]*server.Target{
		"cache": {Type: server.TypeRedis, Nodes: addrs},
		"other": {Type: server.TypeTCP, Nodes: []string{"127.0.0.1:9"}},
	}
}

// TestSSH_OpenSSHForward: `ssh -N -L` reaches node 0 as TARGET, node N as
// N.TARGET and a node by its address; redis-cli works through each, and
// each key lands on its own node.
func TestSSH_OpenSSHForward(t *testing.T) {
	rs, targets := sshTestThreeRedis(t)
	k := newKey(t, "ops@laptop")
	g := startGateway(t, targets, []string{k.Line})
	p := sshTestStartOpenSSH(t, k.Path, g.KnownHosts(t), g.SSHAddr, "cache:6379", "1.cache:6379", rs[2].Addr)
	select {
	case <-p.exited:
		t.Fatalf("ssh exited: %v; stderr:\n%s", p.err, p.Stderr())
	default:
	}
	for i, local := range p.Locals {
		key := fmt.Sprintf("written-via-forward-%d", i)
		if got := redisCLI(t, local, "SET", key, "v"+strconv.Itoa(i)); got != "OK" {
			t.Fatalf("SET through forward %d: %q", i, got)
		}
		if got := redisCLI(t, local, "GET", key); got != "v"+strconv.Itoa(i) {
			t.Fatalf("GET through forward %d: %q", i, got)
		}
		for j, r := range rs {
			n, err := r.Client(t).Exists(context.Background(), key).Result()
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case j == i && n != 1:
				t.Errorf("key written through forward %d is not on node %d", i, j)
			case j != i && n != 0:
				t.Errorf("key written through forward %d landed on node %d", i, j)
			}
		}
	}
	g.Log.waitLog(t, "node="+rs[1].Addr)
	log := g.Log.String()
	for _, want := range []string{"transport=ssh", "ops@laptop", "target=cache", "node=" + rs[0].Addr, "node=" + rs[2].Addr, "result=ok"} {
		if !strings.Contains(log, want) {
			t.Errorf("gateway log lacks %q", want)
		}
	}
}

// TestSSH_OpenSSHRefusals: an unknown key, a wrong host key, a key not
// allowed the target, and forwards to addresses that are no node: all
// refused, and the caches see no connection.
func TestSSH_OpenSSHRefusals(t *testing.T) {
	rs, targets := sshTestThreeRedis(t)
	good := newKey(t, "good")
	stranger := newKey(t, "stranger")
	narrow := newKey(t, "narrow")
	g := startGateway(t, targets, []string{good.Line, `targets="other" ` + narrow.Line})
	kh := g.KnownHosts(t)
	total := func() int64 {
		var n int64
		for _, r := range rs {
			n += r.TotalConnections(t)
		}
		return n
	}
	before := total()

	t.Run("unknown key", func(t *testing.T) {
		p := sshTestStartOpenSSH(t, stranger.Path, kh, g.SSHAddr, "cache:6379")
		if err := p.waitExit(t); err == nil {
			t.Fatal("ssh with an unknown key exited 0")
		}
		if !strings.Contains(p.Stderr(), "Permission denied") {
			t.Fatalf("ssh stderr lacks Permission denied:\n%s", p.Stderr())
		}
		g.Log.waitLog(t, "code=unknown_key")
	})

	t.Run("wrong host key", func(t *testing.T) {
		p := sshTestStartOpenSSH(t, good.Path, wrongKnownHosts(t, g), g.SSHAddr, "cache:6379")
		if err := p.waitExit(t); err == nil {
			t.Fatal("ssh with a wrong known_hosts exited 0")
		}
		if !strings.Contains(p.Stderr(), "REMOTE HOST IDENTIFICATION HAS CHANGED") {
			t.Fatalf("ssh stderr lacks the host key warning:\n%s", p.Stderr())
		}
	})

	// The forwards below are set up; each local connection is refused.
	refused := func(t *testing.T, k key, spec, wantLog string) {
		t.Helper()
		p := sshTestStartOpenSSH(t, k.Path, kh, g.SSHAddr, spec)
		select {
		case <-p.exited:
			t.Fatalf("ssh exited: %v; stderr:\n%s", p.err, p.Stderr())
		default:
		}
		c, err := net.DialTimeout("tcp", p.Locals[0], 5*time.Second)
		if err != nil {
			t.Fatalf("%v; ssh stderr:\n%s", err, p.Stderr())
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		n, err := io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the refused forward stayed open")
		}
		if n != 0 {
			t.Fatalf("read %d bytes through a refused forward", n)
		}
		waitFor(t, 10*time.Second, "ssh to report the refusal", func() bool {
			return strings.Contains(p.Stderr(), "administratively prohibited")
		})
		g.Log.waitLog(t, wantLog)
		// Refused before any dial: the redis servers' connection count
		// (checked at the end) and, for the metadata address, the log
		// show that the gateway dialled nothing.
	}
	t.Run("metadata address", func(t *testing.T) {
		refused(t, good, "169.254.169.254:80", `stream refused`)
		log := g.Log.String()
		var line string
		for _, l := range strings.Split(log, "\n") {
			if strings.Contains(l, "169.254.169.254:80") {
				line = l
			}
		}
		dialled := strings.Contains(log, "upstream connection failed") && strings.Contains(log, "node=169.254.169.254")
		if !strings.Contains(line, `result=unknown_node`) || dialled {
			t.Fatalf("want a refusal before dialling, got log line %q", line)
		}
	})
	t.Run("node index out of range", func(t *testing.T) {
		refused(t, good, "7.cache:6379", `has no node \"7\"`)
	})
	t.Run("target not allowed", func(t *testing.T) {
		refused(t, narrow, "cache:6379", `may not use target \"cache\"`)
	})
	t.Run("node of a target not allowed", func(t *testing.T) {
		refused(t, narrow, rs[1].Addr, `may not use target \"cache\"`)
	})

	if after := total(); after != before {
		t.Fatalf("the redis servers saw %d connections during refusals, want 0", after-before)
	}
}

// TestSSH_OpenSSHShellRefused: without -N, OpenSSH asks for a shell, which
// the gateway refuses with a hint.
func TestSSH_OpenSSHShellRefused(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "shell")
	g := startGateway(t, redisTarget(r), []string{k.Line})
	bin := testenv.RequireBinary(t, "ssh")
	args := sshTestOpenSSHArgs(k.Path, g.KnownHosts(t), g.SSHAddr)
	for i, a := range args {
		if a == "-N" {
			args = append(args[:i:i], args[i+1:]...)
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "127.0.0.1", "true")...)
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK=", "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("ssh running a command exited 0:\n%s", out)
	}
	if !strings.Contains(string(out), "ssh -N -L") {
		t.Fatalf("ssh output lacks the hint:\n%s", out)
	}
}

// sshTestKeygen runs ssh-keygen with args and fails the test on error.
func sshTestKeygen(t testing.TB, args ...string) {
	t.Helper()
	bin := testenv.RequireBinary(t, "ssh-keygen")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// sshTestNewKey makes a key of type typ (ed25519, ecdsa, rsa) with
// ssh-keygen and returns it.
func sshTestNewKey(t testing.TB, typ, comment string) key {
	t.Helper()
	path := filepath.Join(t.TempDir(), "id_"+typ)
	sshTestKeygen(t, "-q", "-t", typ, "-N", "", "-C", comment, "-f", path)
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return key{Path: path, Pub: k, Line: strings.TrimSpace(string(pub))}
}
