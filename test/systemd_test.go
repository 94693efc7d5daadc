package test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/test/testenv"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// cachetunBinary builds cmd/cachetun once per test run.
func cachetunBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cachetun-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "cachetun")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/cachetun/cachetun/cmd/cachetun").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// TestSystemd_NotifyAndDrain runs the real binary the way systemd does
// (Type=notify): READY=1 once it listens, STOPPING=1 on SIGTERM, then a
// drain that lets an open stream finish before exit code 0.
func TestSystemd_NotifyAndDrain(t *testing.T) {
	bin := cachetunBinary(t)
	r := testenv.StartRedis(t)
	dir := t.TempDir()
	hostKey := filepath.Join(dir, "host_ed25519")
	if _, err := auth.GenerateKey(hostKey, "host"); err != nil {
		t.Fatal(err)
	}
	k := newKey(t, "ops")
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(k.Line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeTCPUDPPort(t)
	cfg := fmt.Sprintf("listen: {quic: %q, tls: %q, ssh: \"\"}\nhost_key: %s\nauthorized_keys: %s\nlimits: {drain_timeout: 10s}\ntargets:\n  cache: {type: redis, nodes: [%q]}\n",
		addr, addr, hostKey, filepath.Join(dir, "authorized_keys"), r.Addr)
	cfgPath := filepath.Join(dir, "server.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	// The notify socket systemd would hold.
	sock := filepath.Join(dir, "notify.sock")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	notes := make(chan string, 16)
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := nc.Read(buf)
			if err != nil {
				close(notes)
				return
			}
			notes <- string(buf[:n])
		}
	}()
	waitNote := func(want string) {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for {
			select {
			case n, ok := <-notes:
				if !ok {
					t.Fatalf("notify socket closed before %q", want)
				}
				if strings.Contains(n, want) {
					return
				}
			case <-deadline:
				t.Fatalf("no %q on the notify socket", want)
			}
		}
	}

	var stderr bytes.Buffer
	cmd := exec.Command(bin, "server", "--config", cfgPath)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	cmd.Stderr = &syncWriter{w: &stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
	}()
	waitNote("READY=1")

	// An open stream at SIGTERM time: a redis connection through the tunnel.
	g := &gateway{Addr: addr, HostKey: mustHostKey(t, hostKey)}
	c := mustConnect(t, g, "tls", "cache", k)
	conn, err := net.Dial("tcp", c.Local(t, r.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(buf); err != nil || string(buf) != "+PONG\r\n" {
		t.Fatalf("PING before drain: %q %v", buf, err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitNote("STOPPING=1")
	// The open connection still works during the drain ...
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Read(buf); err != nil || string(buf) != "+PONG\r\n" {
		t.Fatalf("PING during drain: %q %v", buf, err)
	}
	// ... and when it ends, the server exits cleanly.
	conn.Close()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("server exit: %v\n%s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("server did not exit after the drain\n%s", stderr.String())
	}
	for _, want := range []string{"gateway ready", "draining", "stopped"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("server log lacks %q", want)
		}
	}
}

func mustHostKey(t testing.TB, path string) ssh.PublicKey {
	t.Helper()
	s, err := auth.LoadSigner(path)
	if err != nil {
		t.Fatal(err)
	}
	return s.PublicKey()
}
