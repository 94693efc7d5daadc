package test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/test/testenv"
)

// gatewayEndpoint is what a client needs of a gateway: the in-process
// *gateway and the real process *gatewayProc both provide it.
type gatewayEndpoint interface {
	ServerAddr(transport string) string
	KnownHosts(t testing.TB) string
}

// gatewayProcOpts describes the server.yaml of a gateway process.
type gatewayProcOpts struct {
	// Targets maps a target name to its YAML flow mapping, e.g.
	// `{type: redis, nodes: ["127.0.0.1:6379"]}`.
	Targets map[string]string
	// Limits maps a limits: key to its YAML value, e.g. "auth_timeout": "3s".
	Limits map[string]string
	// Extra is more top-level YAML, appended as is.
	Extra string
	// Authorized are the authorized_keys lines.
	Authorized []string
	// NoQUIC and NoSSH disable a transport.
	NoQUIC, NoSSH bool
	// Env is added to the process environment.
	Env []string
	// Args are added to `cachetun server --config PATH`.
	Args []string
	// Wrap is put before the binary, e.g. {"ip", "netns", "exec", NS}
	// to run the gateway in a network namespace (ip netns exec execs the
	// binary, so the PID, signals and /proc are still the gateway's).
	Wrap []string
	// Listen and SSHListen, when set, are the listen addresses (the
	// QUIC+TLS one and the SSH one) instead of free loopback ports: a
	// gateway in a namespace listens on that namespace's address.
	Listen, SSHListen string
}

// gatewayProc is a real `cachetun server` process on loopback ports: the
// binary that systemd would run, so that attacks and bounds are measured
// on the real thing (RSS from /proc, signals, exit codes).
type gatewayProc struct {
	Dir                string
	ConfigPath         string
	AuthorizedKeysPath string
	HostKeyPath        string
	HostKey            ssh.PublicKey
	// Addr is the shared QUIC (UDP) and TLS (TCP) address; SSHAddr the SSH one.
	Addr, SSHAddr string

	opts   gatewayProcOpts
	cmd    *exec.Cmd
	log    *procLog
	exited chan struct{}
	err    error // of Wait, set before exited is closed
	// restarting keeps the log across a Restart.
	restarting bool
}

// procLog collects the process's stderr, line by line, for waiting on.
type procLog struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines int
	t     testing.TB
}

func (l *procLog) add(line string) {
	l.mu.Lock()
	l.buf.WriteString(line)
	l.buf.WriteByte('\n')
	l.lines++
	l.mu.Unlock()
}

func (l *procLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startGatewayProc writes a host key, authorized_keys and server.yaml
// into a temporary directory and starts the built binary on them; it
// returns once the gateway logs "gateway ready". The process is stopped
// (SIGTERM, then SIGKILL) when the test ends.
func startGatewayProc(t testing.TB, o gatewayProcOpts) *gatewayProc {
	t.Helper()
	bin := cachetunBinary(t)
	dir := t.TempDir()
	g := &gatewayProc{
		Dir:                dir,
		ConfigPath:         filepath.Join(dir, "server.yaml"),
		AuthorizedKeysPath: filepath.Join(dir, "authorized_keys"),
		HostKeyPath:        filepath.Join(dir, "host_ed25519"),
		opts:               o,
	}
	pub, err := auth.GenerateKey(g.HostKeyPath, "test-host")
	if err != nil {
		t.Fatal(err)
	}
	g.HostKey = pub
	g.WriteAuthorizedKeys(t, o.Authorized)
	if o.Listen != "" {
		// Given addresses (in a namespace of the test's own): no retry.
		g.Addr, g.SSHAddr = o.Listen, o.SSHListen
		if o.NoSSH {
			g.SSHAddr = ""
		}
		g.WriteConfig(t, o)
		if err := g.start(t, bin); err != nil {
			t.Fatalf("start gateway process: %v\n%s", err, g.Log())
		}
		t.Cleanup(func() { g.Stop(t) })
		return g
	}
	for attempt := 0; ; attempt++ {
		g.Addr = freeTCPUDPPort(t)
		g.SSHAddr = ""
		// Two picks of a free port may return the same one (both were
		// closed again): the SSH port must differ from the TLS one.
		for !o.NoSSH && (g.SSHAddr == "" || g.SSHAddr == g.Addr) {
			g.SSHAddr = freeTCPUDPPort(t)
		}
		g.WriteConfig(t, o)
		err := g.start(t, bin)
		if err == nil {
			break
		}
		if attempt >= 4 || !strings.Contains(g.Log(), "address already in use") {
			t.Fatalf("start gateway process: %v\n%s", err, g.Log())
		}
	}
	t.Cleanup(func() { g.Stop(t) })
	return g
}

// WriteConfig rewrites server.yaml from o, keeping the listen addresses
// (a reload does not move listeners).
func (g *gatewayProc) WriteConfig(t testing.TB, o gatewayProcOpts) {
	t.Helper()
	g.opts = o
	var b strings.Builder
	quic := g.Addr
	if o.NoQUIC {
		quic = ""
	}
	fmt.Fprintf(&b, "listen: {quic: %q, tls: %q, ssh: %q}\n", quic, g.Addr, g.SSHAddr)
	fmt.Fprintf(&b, "host_key: %s\nauthorized_keys: %s\n", g.HostKeyPath, g.AuthorizedKeysPath)
	limits := map[string]string{"drain_timeout": "3s"}
	for k, v := range o.Limits {
		limits[k] = v
	}
	b.WriteString("limits:\n")
	for _, k := range sortedKeys(limits) {
		fmt.Fprintf(&b, "  %s: %s\n", k, limits[k])
	}
	b.WriteString("targets:\n")
	for _, name := range sortedKeys(o.Targets) {
		fmt.Fprintf(&b, "  %s: %s\n", name, o.Targets[name])
	}
	b.WriteString(o.Extra)
	if err := os.WriteFile(g.ConfigPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// WriteAuthorizedKeys replaces authorized_keys (atomically, by rename, as
// configuration management tools do).
func (g *gatewayProc) WriteAuthorizedKeys(t testing.TB, lines []string) {
	t.Helper()
	tmp := g.AuthorizedKeysPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, g.AuthorizedKeysPath); err != nil {
		t.Fatal(err)
	}
}

func (g *gatewayProc) start(t testing.TB, bin string) error {
	t.Helper()
	if g.log == nil || !g.restarting {
		g.log = &procLog{t: t}
	}
	g.restarting = false
	argv := append(append(slices.Clone(g.opts.Wrap), bin, "server", "--config", g.ConfigPath), g.opts.Args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true"), g.opts.Env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	cmd.Stdout = nil
	if err := cmd.Start(); err != nil {
		return err
	}
	g.cmd = cmd
	g.exited = make(chan struct{})
	ready := make(chan struct{})
	var readyOnce sync.Once
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			g.log.add(line)
			if strings.Contains(line, "gateway ready") {
				readyOnce.Do(func() { close(ready) })
			}
		}
		g.err = cmd.Wait()
		close(g.exited)
	}()
	select {
	case <-ready:
		return nil
	case <-g.exited:
		return fmt.Errorf("gateway exited before it was ready: %v", g.err)
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-g.exited
		return fmt.Errorf("gateway not ready within 30s")
	}
}

// Restart starts the gateway again on the same configuration and ports
// after it exited (Stop, or a signal the test sent and waited for); it
// returns once the new process logs "gateway ready".
func (g *gatewayProc) Restart(t testing.TB) {
	t.Helper()
	select {
	case <-g.exited:
	default:
		t.Fatal("restart gateway: the old process is still running")
	}
	g.log.add("--- restarted by the test ---")
	g.restarting = true // keep the log: one log across restarts
	if err := g.start(t, cachetunBinary(t)); err != nil {
		t.Fatalf("restart gateway process: %v\n%s", err, g.Log())
	}
}

// PID returns the gateway's process id.
func (g *gatewayProc) PID() int { return g.cmd.Process.Pid }

// ServerAddr returns the address a client of transport dials.
func (g *gatewayProc) ServerAddr(transport string) string {
	if transport == "ssh" {
		return g.SSHAddr
	}
	return g.Addr
}

// KnownHosts writes a known_hosts file that pins the gateway on both of
// its ports.
func (g *gatewayProc) KnownHosts(t testing.TB) string {
	t.Helper()
	return writeKnownHosts(t, g.HostKey, g.Addr, g.SSHAddr)
}

// RSS returns the gateway's resident set size in bytes (VmRSS of
// /proc/PID/status).
func (g *gatewayProc) RSS(t testing.TB) int64 {
	t.Helper()
	return g.statusKB(t, "VmRSS:")
}

// statusKB returns the field of /proc/PID/status named field (with its
// colon), given in kB, in bytes.
func (g *gatewayProc) statusKB(t testing.TB, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", g.PID()))
	if err != nil {
		t.Fatalf("read gateway status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			f := strings.Fields(rest) // "12345 kB"
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return kb << 10
				}
			}
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, g.PID())
	return 0
}

// ResetPeakRSS makes the gateway's peak RSS (VmHWM) start again from its
// current RSS (writing 5 to /proc/PID/clear_refs, Linux 4.0 and later).
func (g *gatewayProc) ResetPeakRSS(t testing.TB) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", g.PID()), []byte("5"), 0); err != nil {
		t.Fatalf("reset the gateway's peak RSS: %v", err)
	}
}

// PeakRSS returns the gateway's peak resident set size in bytes since it
// started or since ResetPeakRSS (VmHWM of /proc/PID/status): a flood's
// worst moment, however short, not a sample taken after it.
func (g *gatewayProc) PeakRSS(t testing.TB) int64 {
	t.Helper()
	return g.statusKB(t, "VmHWM:")
}

// Signal sends sig to the gateway.
func (g *gatewayProc) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := g.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal gateway: %v", err)
	}
}

// Reload sends SIGHUP and waits until the gateway logs that it reloaded
// (or that the reload failed): it returns the log lines written since.
// The reload's other lines (targets added, restart warnings) come before
// the final one, so they are in the result.
func (g *gatewayProc) Reload(t testing.TB) string {
	t.Helper()
	before := g.logLines()
	g.Signal(t, syscall.SIGHUP)
	var out string
	waitFor(t, 10*time.Second, "gateway to log its reload", func() bool {
		out = g.linesSince(before)
		return strings.Contains(out, "reloaded") || strings.Contains(out, "reload failed")
	})
	return out
}

func (g *gatewayProc) logLines() int {
	g.log.mu.Lock()
	defer g.log.mu.Unlock()
	return g.log.lines
}

// linesSince returns the log lines after the first n.
func (g *gatewayProc) linesSince(n int) string {
	lines := strings.SplitAfter(g.Log(), "\n")
	if n >= len(lines) {
		return ""
	}
	return strings.Join(lines[n:], "")
}

// Log returns everything the gateway wrote to stderr so far.
func (g *gatewayProc) Log() string { return g.log.String() }

// WaitLog waits until the gateway's log contains substr.
func (g *gatewayProc) WaitLog(t testing.TB, substr string, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("gateway log line %q", substr), func() bool {
		return strings.Contains(g.Log(), substr)
	})
}

// Exited is closed when the process has exited.
func (g *gatewayProc) Exited() <-chan struct{} { return g.exited }

// Stop sends SIGTERM and waits for the exit, then SIGKILL after 10 s.
// Idempotent. On a failed test it logs the gateway's output.
func (g *gatewayProc) Stop(t testing.TB) {
	select {
	case <-g.exited:
	default:
		_ = g.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-g.exited:
		case <-time.After(10 * time.Second):
			_ = g.cmd.Process.Kill()
			<-g.exited
		}
	}
	if t.Failed() {
		t.Logf("gateway process log:\n%s", g.Log())
	}
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }

// TestGatewayProc runs the real binary: a client gets through it to a
// real redis-server, the RSS reads, and SIGHUP reloads authorized_keys.
func TestGatewayProc(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "proc")
	g := startGatewayProc(t, gatewayProcOpts{
		Targets:    map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", r.Addr)},
		Authorized: []string{k.Line},
	})
	if rss := g.RSS(t); rss < 1<<20 || rss > 1<<30 {
		t.Fatalf("RSS %d bytes: not a plausible gateway", rss)
	}
	c := mustConnect(t, g, "tls", "cache", k)
	conn, err := net.Dial("tcp", c.Local(t, r.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "+PONG\r\n" {
		t.Fatalf("PING through the gateway process: %q %v", buf, err)
	}
	if out := g.Reload(t); !strings.Contains(out, "reloaded") {
		t.Fatalf("reload log: %q", out)
	}
}
