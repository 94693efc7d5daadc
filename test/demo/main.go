// Command demo shows cachetun working on this machine with nothing set up:
// it makes throw-away keys, starts a cache, a gateway and a client on
// loopback, sends commands through the tunnel and prints them. `make demo`
// runs it.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/cachetun/cachetun/auth"
)

func main() {
	bin := flag.String("bin", "bin/cachetun", "cachetun binary")
	transport := flag.String("transport", "auto", "transport: auto, quic, tls or ssh")
	flag.Parse()
	if err := run(*bin, *transport); err != nil {
		fmt.Fprintf(os.Stderr, "demo: error: %v\n", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(bin, transport string) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "cachetun-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	step("cache: starting one behind the gateway")
	cacheAddr, stopCache, err := startCache(dir)
	if err != nil {
		return err
	}
	defer stopCache()

	step("keys: a gateway host key and a client key (throw-away, in %s)", dir)
	hostKey := filepath.Join(dir, "host_ed25519")
	if _, err := auth.GenerateKey(hostKey, "demo-gateway"); err != nil {
		return err
	}
	clientKey := filepath.Join(dir, "id_ed25519")
	if _, err := auth.GenerateKey(clientKey, "demo-laptop"); err != nil {
		return err
	}
	pub, err := os.ReadFile(clientKey + ".pub")
	if err != nil {
		return err
	}
	ak := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(ak, append([]byte(`targets="demo-redis" `), pub...), 0o600); err != nil {
		return err
	}
	fmt.Printf("    authorized_keys: targets=\"demo-redis\" %s", pub)

	gw, err := freePort()
	if err != nil {
		return err
	}
	sshPort, err := freePort()
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`listen:
  quic: %q
  tls:  %q
  ssh:  %q
host_key: %s
authorized_keys: %s
targets:
  demo-redis:
    type: redis
    nodes: [%q]
`, gw, gw, sshPort, hostKey, ak, cacheAddr)
	cfgPath := filepath.Join(dir, "server.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}

	step("gateway: cachetun server --config %s", cfgPath)
	srvLog := filepath.Join(dir, "server.log")
	srv, err := startProc(ctx, srvLog, bin, "server", "--config", cfgPath)
	if err != nil {
		return err
	}
	defer srv.stop()
	if err := waitListening(ctx, gw, srvLog); err != nil {
		return err
	}

	step("client: cachetun connect demo-redis --server %s --transport %s --accept-new-host-key --local-port 0", gw, transport)
	cliLog := filepath.Join(dir, "connect.log")
	kh := filepath.Join(dir, "known_hosts")
	args := []string{"connect", "demo-redis", "--server", gw, "--transport", transport, "-i", clientKey,
		"--known-hosts", kh, "--accept-new-host-key", "--local-port", "0"}
	if transport == "ssh" {
		args[3] = sshPort
	}
	cl, err := startProc(ctx, cliLog, bin, args...)
	if err != nil {
		return err
	}
	defer cl.stop()
	local, table, err := waitTable(ctx, cl, cliLog)
	if err != nil {
		return err
	}
	fmt.Print(indent(table))

	step("commands through the tunnel (127.0.0.1:%s -> encrypted session -> %s)", strings.Split(local, ":")[1], cacheAddr)
	rdb := redis.NewClient(&redis.Options{Addr: local, DialTimeout: 5 * time.Second})
	defer rdb.Close()
	cmds := [][]any{
		{"PING"},
		{"SET", "greeting", "hello from the other side of the tunnel"},
		{"GET", "greeting"},
		{"INCR", "visits"},
		{"INCR", "visits"},
		{"LPUSH", "queue", "a", "b", "c"},
		{"LRANGE", "queue", "0", "-1"},
	}
	for _, c := range cmds {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		v, err := rdb.Do(cctx, c...).Result()
		cancel()
		if err != nil {
			return fmt.Errorf("%v through the tunnel: %w (logs: %s, %s)", c, err, srvLog, cliLog)
		}
		fmt.Printf("    %-58s -> %v\n", strings.TrimSuffix(fmt.Sprintln(c...), "\n"), v)
	}

	step("what the gateway logged (one audit line per session and per stream)")
	rdb.Close() // a stream's audit line is written when it closes
	var b []byte
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if b, _ = os.ReadFile(srvLog); strings.Contains(string(b), "msg=stream") {
			break
		}
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.Contains(l, "session start") || strings.Contains(l, "msg=stream") {
			fmt.Println("    " + shorten(l))
		}
	}
	step("done: the tunnel worked. Stopping client, gateway and cache.")
	return nil
}

// startCache starts redis-server when installed, else miniredis in process.
func startCache(dir string) (string, func(), error) {
	if path, err := exec.LookPath("redis-server"); err == nil {
		port, err := freePort()
		if err != nil {
			return "", nil, err
		}
		_, p, _ := net.SplitHostPort(port)
		cmd := exec.Command(path, "--port", p, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
		if err := cmd.Start(); err != nil {
			return "", nil, err
		}
		stop := func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() }
		deadline := time.Now().Add(5 * time.Second)
		for {
			c, err := net.Dial("tcp", port)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				stop()
				return "", nil, fmt.Errorf("redis-server did not start on %s", port)
			}
			time.Sleep(20 * time.Millisecond)
		}
		fmt.Printf("    real redis-server (%s) on %s\n", path, port)
		return port, stop, nil
	}
	m, err := miniredis.Run()
	if err != nil {
		return "", nil, err
	}
	fmt.Printf("    redis-server is not installed: using miniredis, an in-process Redis, on %s\n", m.Addr())
	return m.Addr(), m.Close, nil
}

func freePort() (string, error) {
	for i := 0; i < 20; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			u.Close()
			return addr, nil
		}
	}
	return "", errors.New("no free port")
}

type proc struct {
	cmd  *exec.Cmd
	done chan error
}

func startProc(ctx context.Context, logPath, bin string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); f.Close() }()
	return p, nil
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func waitListening(ctx context.Context, addr, logPath string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "gateway ready") {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(logPath)
	return fmt.Errorf("gateway did not start:\n%s", b)
}

var tableLine = regexp.MustCompile(`^\s+(127\.0\.0\.1:\d+)\s+->\s+`)

func waitTable(ctx context.Context, p *proc, logPath string) (string, string, error) {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		select {
		case err := <-p.done:
			b, _ := os.ReadFile(logPath)
			return "", "", fmt.Errorf("connect exited (%v):\n%s", err, b)
		default:
		}
		f, err := os.Open(logPath)
		if err == nil {
			var table strings.Builder
			local := ""
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				l := sc.Text()
				if strings.Contains(l, " via ") || tableLine.MatchString(l) {
					table.WriteString(l + "\n")
				}
				if m := tableLine.FindStringSubmatch(l); m != nil && local == "" {
					local = m[1]
				}
			}
			f.Close()
			if local != "" {
				return local, table.String(), nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(logPath)
	return "", "", fmt.Errorf("connect did not open its ports:\n%s", b)
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}

// shorten drops the timestamp and component of a log line.
func shorten(l string) string {
	l = regexp.MustCompile(`^time=\S+ `).ReplaceAllString(l, "")
	return strings.Replace(l, "component=server ", "", 1)
}
