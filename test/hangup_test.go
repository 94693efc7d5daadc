package test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachetun/cachetun/test/testenv"
)

// TestConnect_HangupStops: when connect's terminal goes away (script(1),
// which owns the pty, is killed, so the kernel sends SIGHUP), connect
// exits within 10 s, as ssh does, instead of holding its local ports with
// no one left to press Ctrl-C. Only the gateway reloads on SIGHUP.
func TestConnect_HangupStops(t *testing.T) {
	scriptBin := testenv.RequireBinary(t, "script")
	r := testenv.StartRedis(t)
	k := newKey(t, "hangup@laptop")
	g := startGateway(t, redisTarget(r), []string{k.Line})
	bin := cachetunBinary(t)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	line := strings.Join([]string{bin, "connect", "cache", "--server", g.Addr, "--transport", "tls", "-i", k.Path,
		"--known-hosts", g.KnownHosts(t), "--local-port", "0"}, " ")
	cmd := exec.CommandContext(ctx, scriptBin, "-q", "-e", "-E", "always", "-c", line, "/dev/null")
	cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK=", "HOME="+t.TempDir())
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
	waitFor(t, 15*time.Second, "listener table", func() bool { return strings.Contains(text(), "via tls") })
	var child int
	waitFor(t, 5*time.Second, "connect's pid", func() bool {
		kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		f := strings.Fields(string(kids))
		if len(f) == 0 {
			return false
		}
		child, _ = strconv.Atoi(f[0])
		return child > 0
	})
	// Make sure a leftover is not left behind if the assertion fails.
	defer func() { _ = syscall.Kill(child, syscall.SIGKILL) }()

	_ = cmd.Process.Kill() // the terminal goes away
	_ = cmd.Wait()
	waitFor(t, 10*time.Second, "connect to exit after its terminal hung up", func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		// Gone, or a zombie (init reaps it): either way it holds no port.
		return err != nil || strings.Contains(string(b), ") Z ")
	})
}
