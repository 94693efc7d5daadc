package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cachetun/cachetun/bench/internal/sshdenv"
)

// Path names, in the order of the tables.
const (
	pathDirect     = "direct"
	pathSocat      = "socat"
	pathNutcracker = "nutcracker"
	pathSSHL       = "ssh -L"
	pathQUIC       = "cachetun quic"
	pathTLS        = "cachetun tls"
	pathSSH        = "cachetun ssh"
)

var allPaths = []string{pathDirect, pathSocat, pathNutcracker, pathSSHL, pathQUIC, pathTLS, pathSSH}

// cachetunTransport maps a cachetun path to its transport.
var cachetunTransport = map[string]string{pathQUIC: "quic", pathTLS: "tls", pathSSH: "ssh"}

// baseSuffix names the paths of -base-bin: "cachetun quic @base" is
// "cachetun quic" run with the base binary, in the same rounds.
const baseSuffix = " @base"

// addBasePaths adds a base path after each cachetun path, to paths and to
// the table order.
func addBasePaths(paths []string) []string {
	var out []string
	for _, p := range paths {
		out = append(out, p)
		if tr, ok := cachetunTransport[p]; ok {
			out = append(out, p+baseSuffix)
			cachetunTransport[p+baseSuffix] = tr
		}
	}
	var order []string
	for _, p := range allPaths {
		order = append(order, p)
		if _, ok := cachetunTransport[p+baseSuffix]; ok {
			order = append(order, p+baseSuffix)
		}
	}
	allPaths = order
	return out
}

// isBase reports whether a path runs the -base-bin binary.
func isBase(path string) bool { return strings.HasSuffix(path, baseSuffix) }

// benchPath is one way from redis-benchmark to the redis-server.
type benchPath struct {
	name string
	addr string // what clients dial
	// clientPIDs and serverPIDs name the processes whose RSS is the
	// laptop side and the gateway side of the path (funcs: sshd forks).
	clientPIDs func() []int
	serverPIDs func() []int
	// cachetun only: the pprof addresses of connect and server and the
	// server's metrics address.
	clientPprof   string
	serverPprof   string
	serverMetrics string
	procs         []*proc
}

func (p *benchPath) stop() {
	for i := len(p.procs) - 1; i >= 0; i-- {
		p.procs[i].stop(5 * time.Second)
	}
}

// startRedis starts the one redis-server every path leads to.
func (b *bench) startRedis() error {
	dir := filepath.Join(b.dir, "redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort(false)
		if err != nil {
			return err
		}
		p, err := b.spawn("redis-server", []string{b.tools["redis-server"],
			"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--protected-mode", "no",
			"--save", "", "--appendonly", "no", "--dir", dir, "--maxclients", "16000",
			"--daemonize", "no", "--logfile", ""})
		if err != nil {
			return err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if lastErr = waitFor(b.ctx, p, 10*time.Second, "redis-server", func() bool { return probeRedis(addr, time.Second) == nil }); lastErr == nil {
			b.redis = p
			b.redisAddr = addr
			return nil
		}
		p.stop(2 * time.Second)
	}
	return fmt.Errorf("start redis-server: %w", lastErr)
}

// setupPath starts the processes of one path and waits until a GET goes
// through it. tag distinguishes fresh instances (the idle test starts its
// own).
func (b *bench) setupPath(name, tag string) (*benchPath, error) {
	switch name {
	case pathDirect:
		pid := b.redis.pid()
		return &benchPath{name: name, addr: b.redisAddr, serverPIDs: func() []int { return []int{pid} }}, nil
	case pathSocat:
		return b.setupSocat(tag)
	case pathNutcracker:
		return b.setupNutcracker(tag)
	case pathSSHL:
		return b.setupSSHL(tag)
	}
	if _, ok := cachetunTransport[name]; ok {
		return b.setupCachetun(name, tag)
	}
	return nil, fmt.Errorf("unknown path %q", name)
}

// retryPort runs start on fresh ports until it does not fail; a port taken
// between freePort and the child's bind is the only expected failure.
func retryPort(udp bool, start func(port int) (*benchPath, error)) (*benchPath, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort(udp)
		if err != nil {
			return nil, err
		}
		p, err := start(port)
		if err == nil {
			return p, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func (b *bench) setupSocat(tag string) (*benchPath, error) {
	return retryPort(false, func(port int) (*benchPath, error) {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		p, err := b.spawn("socat"+tag, []string{b.tools["socat"],
			fmt.Sprintf("TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,backlog=1024,nodelay", port),
			"TCP:" + b.redisAddr + ",nodelay"})
		if err != nil {
			return nil, err
		}
		if err := waitFor(b.ctx, p, 10*time.Second, "socat", func() bool { return probeRedis(addr, time.Second) == nil }); err != nil {
			p.stop(2 * time.Second)
			return nil, err
		}
		pid := p.pid()
		return &benchPath{name: pathSocat, addr: addr, procs: []*proc{p},
			clientPIDs: func() []int { return descendants(pid) }}, nil
	})
}

func (b *bench) setupNutcracker(tag string) (*benchPath, error) {
	return retryPort(false, func(port int) (*benchPath, error) {
		statsPort, err := freePort(false)
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		conf := filepath.Join(b.dir, "nutcracker"+tag+".yml")
		yml := fmt.Sprintf(`bench:
  listen: %s
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  server_connections: 1
  servers:
   - %s:1
`, addr, b.redisAddr)
		if err := os.WriteFile(conf, []byte(yml), 0o644); err != nil {
			return nil, err
		}
		b.recordConfig("nutcracker.yml", tag, yml)
		p, err := b.spawn("nutcracker"+tag, []string{b.tools["nutcracker"], "-c", conf,
			"-o", filepath.Join(b.dir, "logs", "nutcracker"+tag+".out"), "-v", "3",
			"-s", strconv.Itoa(statsPort), "-a", "127.0.0.1",
			"-p", filepath.Join(b.dir, "nutcracker"+tag+".pid")})
		if err != nil {
			return nil, err
		}
		if err := waitFor(b.ctx, p, 10*time.Second, "nutcracker", func() bool { return probeRedis(addr, time.Second) == nil }); err != nil {
			p.stop(2 * time.Second)
			return nil, err
		}
		pid := p.pid()
		return &benchPath{name: pathNutcracker, addr: addr, procs: []*proc{p},
			serverPIDs: func() []int { return []int{pid} }}, nil
	})
}

// sshKeys creates, once, the host key, client key and authorized_keys of
// the private sshd (bench/internal/sshdenv, shared with the WAN bench).
func (b *bench) sshKeys() error {
	if b.sshd != nil {
		return nil
	}
	e, err := sshdenv.Setup(b.ctx, filepath.Join(b.dir, "sshd"), b.tools["ssh-keygen"], "cachetun-bench",
		func(argv []string) { b.record("setup", argv) })
	if err != nil {
		return err
	}
	b.sshd = e
	return nil
}

func (b *bench) setupSSHL(tag string) (*benchPath, error) {
	if err := b.sshKeys(); err != nil {
		return nil, err
	}
	u, err := user.Current()
	if err != nil {
		return nil, err
	}
	var sshd *proc
	var sshdPort int
	for attempt := 0; ; attempt++ {
		if sshdPort, err = freePort(false); err != nil {
			return nil, err
		}
		conf := filepath.Join(b.sshd.Dir, "sshd_config"+tag)
		cfg, err := b.sshd.WriteConfig(conf, "private sshd of cachetun-bench: key-only, loopback only", "127.0.0.1", sshdPort)
		if err != nil {
			return nil, err
		}
		b.recordConfig("sshd_config", tag, cfg)
		sshd, err = b.spawn("sshd"+tag, sshdenv.SSHDArgs(b.tools["sshd"], conf))
		if err != nil {
			return nil, err
		}
		sshdAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sshdPort))
		err = waitFor(b.ctx, sshd, 10*time.Second, "sshd to listen", func() bool {
			c, err := net.DialTimeout("tcp", sshdAddr, time.Second)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		if err == nil {
			break
		}
		sshd.stop(2 * time.Second)
		if attempt >= 2 {
			return nil, err
		}
	}
	kh := filepath.Join(b.sshd.Dir, "known_hosts"+tag)
	if err := b.sshd.WriteKnownHosts(kh, "127.0.0.1", sshdPort); err != nil {
		return nil, err
	}
	sshArgs := func(extra ...string) []string { return b.sshd.ClientArgs(b.tools["ssh"], sshdPort, kh, extra...) }
	if b.facts.sshCipher == "" {
		b.facts.sshCipher = b.sshCipher(sshArgs("-v", u.Username+"@127.0.0.1", "true"))
	}
	var client *proc
	bp, err := retryPort(false, func(port int) (*benchPath, error) {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		p, err := b.spawn("ssh"+tag, sshArgs("-N", "-L", fmt.Sprintf("127.0.0.1:%d:%s", port, b.redisAddr), u.Username+"@127.0.0.1"))
		if err != nil {
			return nil, err
		}
		if err := waitFor(b.ctx, p, 15*time.Second, "ssh -L", func() bool { return probeRedis(addr, 2*time.Second) == nil }); err != nil {
			p.stop(2 * time.Second)
			return nil, err
		}
		client = p
		return &benchPath{name: pathSSHL, addr: addr}, nil
	})
	if err != nil {
		sshd.stop(2 * time.Second)
		return nil, err
	}
	cpid, spid := client.pid(), sshd.pid()
	bp.procs = []*proc{sshd, client}
	bp.clientPIDs = func() []int { return []int{cpid} }
	bp.serverPIDs = func() []int { return descendants(spid) }
	return bp, nil
}

// sshCipher runs one ssh -v command and returns the negotiated cipher.
func (b *bench) sshCipher(argv []string) string {
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	re := regexp.MustCompile(`kex: server->client cipher: (\S+) MAC: (\S+)`)
	if m := re.FindSubmatch(out); m != nil {
		return string(m[1])
	}
	return "unknown"
}

// cachetunKeys creates, once, the gateway directory (server init) and the
// client key (keygen).
func (b *bench) cachetunKeys() error {
	if b.ctDir != "" {
		return nil
	}
	dir := filepath.Join(b.dir, "cachetun")
	for _, argv := range [][]string{
		{b.bin, "server", "init", "--dir", dir, "--name", "127.0.0.1"},
		{b.bin, "keygen", "-f", filepath.Join(dir, "client_ed25519"), "-C", "cachetun-bench"},
	} {
		b.record("setup", argv)
		if out, err := exec.CommandContext(b.ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(argv[1:3], " "), err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "client_ed25519.pub"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return err
	}
	b.ctDir = dir
	return nil
}

var connectLine = regexp.MustCompile(`^\s+(127\.0\.0\.1:\d+)\s+->\s+\S+`)

// setupCachetun starts a gateway with only this transport and a connect
// to it. Each transport gets its own pair of processes, so that RSS and
// goroutine counts belong to one transport.
func (b *bench) setupCachetun(name, tag string) (*benchPath, error) {
	if err := b.cachetunKeys(); err != nil {
		return nil, err
	}
	tr := cachetunTransport[name]
	bin, extraLimits := b.bin, ""
	if isBase(name) {
		// Its own files and process names: the two gateways of a
		// transport run side by side.
		bin, tag = b.baseBin, "-base"+tag
		for _, kv := range b.opts.baseLimits { // -base-limits
			extraLimits += "  " + kv + "\n"
		}
	}
	dir := b.ctDir
	var srv *proc
	var srvAddr, metrics, spprof string
	var err error
	for attempt := 0; ; attempt++ {
		var port, mport int
		if port, err = freePort(tr == "quic"); err != nil {
			return nil, err
		}
		if mport, err = freePort(false); err != nil {
			return nil, err
		}
		srvAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		metrics = net.JoinHostPort("127.0.0.1", strconv.Itoa(mport))
		listen := map[string]string{"quic": `""`, "tls": `""`, "ssh": `""`}
		listen[tr] = `"` + srvAddr + `"`
		cfg := fmt.Sprintf(`# cachetun-bench gateway: one transport, one redis target
listen:
  quic: %s
  tls: %s
  ssh: %s
host_key: %s
authorized_keys: %s
targets:
  bench:
    type: redis
    nodes: ["%s"]
limits:
  # the idle test holds 10,000 connections through one session
  max_streams_per_session: 16384
%smetrics: "%s"
`, listen["quic"], listen["tls"], listen["ssh"], filepath.Join(dir, "host_ed25519"),
			filepath.Join(dir, "authorized_keys"), b.redisAddr, extraLimits, metrics)
		conf := filepath.Join(dir, "server-"+tr+tag+".yaml")
		if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		b.recordConfig("server-"+tr+".yaml", tag, cfg)
		pport, err := freePort(false)
		if err != nil {
			return nil, err
		}
		spprof = net.JoinHostPort("127.0.0.1", strconv.Itoa(pport))
		srv, err = b.spawn("cachetun-server-"+tr+tag, []string{bin, "--pprof", spprof, "server", "--config", conf})
		if err != nil {
			return nil, err
		}
		err = waitFor(b.ctx, srv, 10*time.Second, "cachetun server metrics", func() bool {
			_, err := httpGet("http://" + metrics + "/metrics")
			return err == nil
		})
		if err == nil {
			break
		}
		srv.stop(2 * time.Second)
		if attempt >= 2 || srv.exited() && !strings.Contains(srv.tail(5), "address already in use") {
			return nil, fmt.Errorf("cachetun server (%s) did not start: %v", tr, err)
		}
	}
	cport, err := freePort(false)
	if err != nil {
		srv.stop(2 * time.Second)
		return nil, err
	}
	cpprof := net.JoinHostPort("127.0.0.1", strconv.Itoa(cport))
	conn, err := b.spawn("cachetun-connect-"+tr+tag, []string{bin, "--pprof", cpprof, "connect", "bench",
		"--server", srvAddr, "--transport", tr, "-i", filepath.Join(dir, "client_ed25519"),
		"--known-hosts", filepath.Join(dir, "known_hosts-"+tr+tag), "--accept-new-host-key", "--local-port", "0"})
	if err != nil {
		srv.stop(2 * time.Second)
		return nil, err
	}
	m, err := conn.waitLine(b.ctx, connectLine, 20*time.Second)
	if err != nil {
		conn.stop(2 * time.Second)
		srv.stop(2 * time.Second)
		return nil, fmt.Errorf("cachetun connect --transport %s did not come up: %v", tr, err)
	}
	addr := m[1]
	if err := waitFor(b.ctx, conn, 10*time.Second, "a GET through cachetun", func() bool { return probeRedis(addr, 2*time.Second) == nil }); err != nil {
		conn.stop(2 * time.Second)
		srv.stop(2 * time.Second)
		return nil, err
	}
	spid, cpid := srv.pid(), conn.pid()
	return &benchPath{name: name, addr: addr, procs: []*proc{srv, conn},
		clientPIDs: func() []int { return []int{cpid} }, serverPIDs: func() []int { return []int{spid} },
		clientPprof: cpprof, serverPprof: spprof, serverMetrics: metrics}, nil
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

func httpGet(url string) ([]byte, error) { return httpGetWith(httpClient, url) }

// httpGetWith is httpGet with its own client (a CPU profile answers only
// after its length, which can exceed httpClient's timeout).
func httpGetWith(hc *http.Client, url string) ([]byte, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
		if sb.Len() > 64<<20 {
			return nil, fmt.Errorf("GET %s: body too large", url)
		}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return []byte(sb.String()), nil
}
