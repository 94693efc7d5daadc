// Command cachetun-bench-wan measures what a developer on a laptop feels:
// the paths to a redis-server across an emulated WAN link. Two network
// namespaces ("laptop" and "gateway", created here and deleted on exit)
// are joined by bench/linkemu (a TUN device in each and a user-space pump
// with a one-way delay, a rate limit with a 60 ms tail-drop queue, and
// random loss; this kernel has no netem). redis-server runs in the
// gateway namespace on its loopback; the paths are
//
//   - direct: iptables DNAT on the gateway namespace's link interface to
//     redis (the AWS guide's bastion recipe), plaintext;
//   - ssh -L: stock OpenSSH, a private sshd in the gateway namespace;
//   - cachetun quic, tls and ssh: the real binaries, server in the
//     gateway namespace, connect in the laptop namespace.
//
// The workloads run in this process, from sockets made in the laptop
// namespace, with a small RESP client: the time from starting the tunnel
// to the first reply, a new connection + PING, GET with 50 connections
// (ops/s and p99), GET and SET of a 32 MiB value, and 8 parallel GETs of
// an 8 MiB value. Rounds are interleaved (every path once per round);
// tables hold medians with ratios to ssh -L and to direct. Its section of
// BENCHMARKS.md lies between its own markers.
//
// Needs root (namespaces, TUN, iptables). make bench-wan runs
//
//	go run ./bench/cmd/cachetun-bench-wan -bin bin/cachetun -out BENCHMARKS.md
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cachetun/cachetun/bench/linkemu"
)

const (
	pathDirect = "direct"
	pathSSHL   = "ssh -L"
	pathQUIC   = "cachetun quic"
	pathTLS    = "cachetun tls"
	pathSSH    = "cachetun ssh"
)

var allPaths = []string{pathDirect, pathSSHL, pathQUIC, pathTLS, pathSSH}

// Workload names, in table order.
const (
	wFirst   = "first reply after start (ms)"
	wNewConn = "new connection + PING (ms)"
	wGet50   = "GET -c 50 (ops/s)"
	wGet50p  = "its p99 (ms)"
	wGetBig  = "GET of 32 MiB (MiB/s)"
	wSetBig  = "SET of 32 MiB (MiB/s)"
	wBulk8   = "8 parallel GETs of 8 MiB (MiB/s)"
)

var shortName = map[string]string{wFirst: "first-ms", wNewConn: "newconn-ms", wGet50: "get50-ops", wGet50p: "get50-p99-ms",
	wGetBig: "get32M-MiBps", wSetBig: "set32M-MiBps", wBulk8: "8xget8M-MiBps"}

var allWorkloads = []string{wFirst, wNewConn, wGet50, wGet50p, wGetBig, wSetBig, wBulk8}

// workload flags (-workloads) name groups: first, newconn, get50, big, bulk8.
var workloadGroups = map[string][]string{
	"first": {wFirst}, "newconn": {wNewConn}, "get50": {wGet50, wGet50p},
	"big": {wGetBig, wSetBig}, "bulk8": {wBulk8},
}

type link struct {
	name string
	rtt  time.Duration
	rate int64 // bits/s
	loss float64
}

func (l link) String() string {
	return fmt.Sprintf("%d ms RTT, %d Mbit/s, %g %% loss", l.rtt.Milliseconds(), l.rate/1_000_000, l.loss*100)
}

var allLinks = []link{
	{name: "20ms", rtt: 20 * time.Millisecond, rate: 500_000_000},
	{name: "20ms-loss", rtt: 20 * time.Millisecond, rate: 500_000_000, loss: 0.01},
	{name: "80ms", rtt: 80 * time.Millisecond, rate: 200_000_000},
	{name: "80ms-loss", rtt: 80 * time.Millisecond, rate: 200_000_000, loss: 0.01},
	{name: "200ms", rtt: 200 * time.Millisecond, rate: 100_000_000},
	{name: "200ms-loss", rtt: 200 * time.Millisecond, rate: 100_000_000, loss: 0.01},
}

const (
	bigSize   = 32 << 20
	bulkSize  = 8 << 20
	bulkConns = 8
	getConns  = 50
	redisPort = 6379
	sshdPort  = 22
	ctPort    = 4433 // QUIC (UDP) and TLS (TCP)
	ctSSHPort = 2222
	laptopIP  = "10.254.200.1"
	gatewayIP = "10.254.200.2"
	localPort = 16379 // the tunnels' local port in the laptop namespace
)

type wan struct {
	ctx       context.Context
	log       *log.Logger
	bin       string
	dir       string
	laptop    string
	gateway   string
	paths     []string
	workloads []string
	get50Dur  time.Duration
	bulkCap   time.Duration
	procs     []*exec.Cmd
	mu        sync.Mutex
	// results[link][path][workload] = one value per round
	results map[string]map[string]map[string][]float64
	errs    map[string]map[string]string
	links   []link
	rounds  int
	started time.Time
}

func main() {
	log.SetFlags(0)
	os.Exit(run())
}

func run() int {
	var bin, out, paths, links, workloads string
	var rounds int
	var timeout, get50, bulkCap time.Duration
	var keep bool
	flag.StringVar(&bin, "bin", "", "cachetun binary (default: go build ./cmd/cachetun into the temp dir)")
	flag.StringVar(&out, "out", "BENCHMARKS.md", "markdown file whose WAN section is rewritten (empty: print only)")
	flag.IntVar(&rounds, "rounds", 2, "interleaved rounds")
	flag.StringVar(&paths, "paths", "direct,ssh-L,cachetun-quic,cachetun-tls,cachetun-ssh", "comma-separated paths")
	names := make([]string, len(allLinks))
	for i, l := range allLinks {
		names[i] = l.name
	}
	flag.StringVar(&links, "links", strings.Join(names, ","), "comma-separated links")
	flag.StringVar(&workloads, "workloads", "first,newconn,get50,big,bulk8", "comma-separated workload groups")
	flag.DurationVar(&get50, "get50-duration", 3*time.Second, "length of each GET -c 50 run")
	flag.DurationVar(&bulkCap, "bulk-timeout", 40*time.Second, "give up a bulk transfer after this long (the cell shows it as a bound)")
	flag.DurationVar(&timeout, "timeout", 30*time.Minute, "abort the whole run after this long")
	flag.BoolVar(&keep, "keep", false, "keep the temp dir (logs, configs)")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Print("cachetun-bench-wan: error: needs root (it creates network namespaces, TUN devices and iptables rules); run it as root")
		return 2
	}
	w := &wan{log: log.New(os.Stderr, "", log.Ltime), rounds: rounds, get50Dur: get50, bulkCap: bulkCap,
		results: map[string]map[string]map[string][]float64{}, errs: map[string]map[string]string{}, started: time.Now()}
	for _, p := range splitList(paths) {
		p = strings.ReplaceAll(p, "ssh-L", pathSSHL)
		if strings.HasPrefix(p, "cachetun-") {
			p = "cachetun " + strings.TrimPrefix(p, "cachetun-")
		}
		if !slices.Contains(allPaths, p) {
			log.Printf("cachetun-bench-wan: error: unknown path %q (known: direct, ssh-L, cachetun-quic, cachetun-tls, cachetun-ssh)", p)
			return 2
		}
		w.paths = append(w.paths, p)
	}
	for _, n := range splitList(links) {
		i := slices.IndexFunc(allLinks, func(l link) bool { return l.name == n })
		if i < 0 {
			log.Printf("cachetun-bench-wan: error: unknown link %q (known: %s)", n, strings.Join(names, ", "))
			return 2
		}
		w.links = append(w.links, allLinks[i])
	}
	for _, g := range splitList(workloads) {
		ws, ok := workloadGroups[g]
		if !ok {
			log.Printf("cachetun-bench-wan: error: unknown workload group %q (known: first, newconn, get50, big, bulk8)", g)
			return 2
		}
		w.workloads = append(w.workloads, ws...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case s := <-sig:
			w.log.Printf("%s: stopping", s)
			cancel()
		case <-ctx.Done():
		}
	}()
	w.ctx = ctx
	dir, err := os.MkdirTemp("", "cachetun-bench-wan-")
	if err != nil {
		log.Print(err)
		return 1
	}
	w.dir = dir
	if !keep {
		defer os.RemoveAll(dir)
	}
	w.bin = bin
	err = w.main()
	w.cleanup()
	if err != nil {
		log.Printf("cachetun-bench-wan: error: %v", err)
		return 1
	}
	section := w.report()
	fmt.Print(section)
	if out != "" {
		if err := writeSection(out, section); err != nil {
			log.Printf("cachetun-bench-wan: error: %v", err)
			return 1
		}
		w.log.Printf("wrote the WAN section of %s", out)
	}
	return 0
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func (w *wan) main() error {
	if w.bin == "" {
		w.bin = filepath.Join(w.dir, "cachetun")
		if out, err := exec.Command("go", "build", "-o", w.bin, "./cmd/cachetun").CombinedOutput(); err != nil {
			return fmt.Errorf("build cachetun: %w: %s", err, out)
		}
	} else if abs, err := filepath.Abs(w.bin); err == nil {
		w.bin = abs
	}
	id := strconv.Itoa(os.Getpid())
	w.laptop, w.gateway = "wan-laptop-"+id, "wan-gw-"+id
	for _, ns := range []string{w.laptop, w.gateway} {
		if err := linkemu.AddNetns(ns); err != nil {
			return err
		}
	}
	for _, argv := range [][]string{
		// DNAT to the gateway namespace's loopback needs route_localnet.
		{"sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1"},
		{"iptables", "-t", "nat", "-A", "PREROUTING", "-i", "emu0", "-p", "tcp", "--dport", strconv.Itoa(redisPort),
			"-j", "DNAT", "--to-destination", "127.0.0.1:" + strconv.Itoa(redisPort)},
	} {
		if err := w.sh(w.gateway, argv...); err != nil {
			return err
		}
	}
	if err := w.startGatewaySide(); err != nil {
		return err
	}
	for _, l := range w.links {
		if err := w.runLink(l); err != nil {
			return err
		}
	}
	return w.ctx.Err()
}

// sh runs a short command in namespace ns.
func (w *wan) sh(ns string, argv ...string) error {
	ctx, cancel := context.WithTimeout(w.ctx, 20*time.Second)
	defer cancel()
	full := append([]string{"ip", "netns", "exec", ns}, argv...)
	if out, err := exec.CommandContext(ctx, full[0], full[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(full, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// spawn starts argv in namespace ns with its output in logs/name.log.
func (w *wan) spawn(ns, name string, env []string, argv ...string) (*exec.Cmd, error) {
	if err := w.ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Create(filepath.Join(w.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	full := append([]string{"ip", "netns", "exec", ns}, argv...)
	cmd := exec.Command(full[0], full[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { cmd.Wait(); f.Close() }()
	w.mu.Lock()
	w.procs = append(w.procs, cmd)
	w.mu.Unlock()
	return cmd, nil
}

func stop(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if syscall.Kill(cmd.Process.Pid, 0) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
}

func (w *wan) cleanup() {
	w.mu.Lock()
	procs := w.procs
	w.procs = nil
	w.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		stop(procs[i])
	}
	for _, ns := range []string{w.laptop, w.gateway} {
		if ns != "" {
			if err := linkemu.DelNetns(ns); err != nil {
				w.log.Print(err)
			}
		}
	}
}

// startGatewaySide starts redis-server, sshd and the cachetun server in
// the gateway namespace; they outlive link changes (the TUN device is
// re-created per link, so they listen on every address).
func (w *wan) startGatewaySide() error {
	if _, err := w.spawn(w.gateway, "redis-server", nil, "redis-server", "--bind", "127.0.0.1", "--port", strconv.Itoa(redisPort),
		"--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", w.dir, "--daemonize", "no"); err != nil {
		return err
	}
	redisAddr := "127.0.0.1:" + strconv.Itoa(redisPort)
	if err := w.waitFor(10*time.Second, "redis-server", func() bool {
		c, err := dialIn(w.gateway, redisAddr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		return ping(c, time.Second) == nil
	}); err != nil {
		return err
	}
	// The values the GETs fetch, written on the gateway's loopback.
	c, err := dialIn(w.gateway, redisAddr, time.Second)
	if err != nil {
		return err
	}
	r := bufio.NewReader(c)
	for _, kv := range []struct {
		k string
		n int
	}{{"wan:small", 3}, {"wan:big", bigSize}, {"wan:bulk", bulkSize}} {
		if err := set(c, r, kv.k, kv.n, 30*time.Second); err != nil {
			c.Close()
			return fmt.Errorf("load %s: %w", kv.k, err)
		}
	}
	c.Close()

	if slices.Contains(w.paths, pathSSHL) {
		if err := w.startSSHD(); err != nil {
			return err
		}
	}
	if slices.ContainsFunc(w.paths, func(p string) bool { return strings.HasPrefix(p, "cachetun ") }) {
		if err := w.startCachetunServer(redisAddr); err != nil {
			return err
		}
	}
	return nil
}

func (w *wan) waitFor(d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for %s: not ready after %v (logs in %s)", what, d, w.dir)
		}
		if w.ctx.Err() != nil {
			return w.ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func (w *wan) startSSHD() error {
	dir := filepath.Join(w.dir, "sshd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, k := range []string{"host_ed25519", "client_ed25519"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cachetun-bench-wan", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			return fmt.Errorf("ssh-keygen: %w: %s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "client_ed25519.pub"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return err
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	conf := filepath.Join(dir, "sshd_config")
	cfg := fmt.Sprintf(`# private sshd of cachetun-bench-wan, in its gateway namespace
Port %d
ListenAddress 0.0.0.0
HostKey %s
PidFile none
UsePAM no
StrictModes no
PubkeyAuthentication yes
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
AllowTcpForwarding local
X11Forwarding no
PermitTTY no
PrintMotd no
UseDNS no
MaxStartups 100:30:200
`, sshdPort, filepath.Join(dir, "host_ed25519"), filepath.Join(dir, "authorized_keys"))
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		return err
	}
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		sshd = "/usr/sbin/sshd"
	}
	if _, err := w.spawn(w.gateway, "sshd", nil, sshd, "-D", "-e", "-f", conf); err != nil {
		return err
	}
	hostPub, err := os.ReadFile(filepath.Join(dir, "host_ed25519.pub"))
	if err != nil {
		return err
	}
	f := strings.Fields(string(hostPub))
	return os.WriteFile(filepath.Join(dir, "known_hosts"), []byte(gatewayIP+" "+f[0]+" "+f[1]+"\n"), 0o600)
}

func (w *wan) startCachetunServer(redisAddr string) error {
	dir := filepath.Join(w.dir, "cachetun")
	for _, argv := range [][]string{
		{w.bin, "server", "init", "--dir", dir, "--name", gatewayIP},
		{w.bin, "keygen", "-f", filepath.Join(dir, "client_ed25519"), "-C", "cachetun-bench-wan"},
	} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(argv[1:3], " "), err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "client_ed25519.pub"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`# cachetun-bench-wan gateway, in its gateway namespace
listen:
  quic: "0.0.0.0:%d"
  tls: "0.0.0.0:%d"
  ssh: "0.0.0.0:%d"
host_key: %s
authorized_keys: %s
targets:
  bench:
    type: redis
    nodes: ["%s"]
`, ctPort, ctPort, ctSSHPort, filepath.Join(dir, "host_ed25519"), filepath.Join(dir, "authorized_keys"), redisAddr)
	conf := filepath.Join(dir, "server.yaml")
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		return err
	}
	cmd, err := w.spawn(w.gateway, "cachetun-server", []string{"QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true"}, w.bin, "server", "--config", conf)
	if err != nil {
		return err
	}
	return w.waitFor(10*time.Second, "cachetun server to listen", func() bool {
		if syscall.Kill(cmd.Process.Pid, 0) != nil {
			return false
		}
		c, err := dialIn(w.gateway, "127.0.0.1:"+strconv.Itoa(ctPort), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// runLink sets the link up, runs the rounds and takes the link down.
func (w *wan) runLink(l link) error {
	one := linkemu.Dir{Delay: l.rtt / 2, RateBps: l.rate, QueueBytes: int(l.rate / 8 * int64(60*time.Millisecond) / int64(time.Second)), Loss: l.loss}
	emu, err := linkemu.New(linkemu.Config{NetnsA: w.laptop, NetnsB: w.gateway, AddrA: laptopIP, AddrB: gatewayIP, AtoB: one, BtoA: one})
	if err != nil {
		return err
	}
	defer emu.Close()
	w.log.Printf("link %s (%s)", l.name, l)
	w.results[l.name] = map[string]map[string][]float64{}
	w.errs[l.name] = map[string]string{}
	for r := 0; r < w.rounds; r++ {
		for _, p := range w.paths {
			if w.ctx.Err() != nil {
				return w.ctx.Err()
			}
			res, err := w.runPath(p)
			if err != nil {
				w.log.Printf("  round %d %s: %s", r+1, p, strings.ReplaceAll(err.Error(), "\n", "; "))
				if w.errs[l.name][p] == "" {
					w.errs[l.name][p] = strings.ReplaceAll(err.Error(), "\n", "; ")
				}
			}
			if w.results[l.name][p] == nil {
				w.results[l.name][p] = map[string][]float64{}
			}
			var parts []string
			for _, k := range allWorkloads {
				if v, ok := res[k]; ok {
					w.results[l.name][p][k] = append(w.results[l.name][p][k], v)
					parts = append(parts, fmt.Sprintf("%s=%.1f", shortName[k], v))
				}
			}
			w.log.Printf("  round %d %-14s %s", r+1, p, strings.Join(parts, " "))
		}
	}
	c := emu.AtoB()
	d := emu.BtoA()
	w.log.Printf("  link counters laptop→gateway %+v, gateway→laptop %+v", c, d)
	return nil
}

// runPath starts one path's tunnel (none for direct), runs the workloads
// through it and stops it.
func (w *wan) runPath(p string) (map[string]float64, error) {
	res := map[string]float64{}
	addr := "127.0.0.1:" + strconv.Itoa(localPort)
	start := time.Now()
	var tunnel *exec.Cmd
	var err error
	switch p {
	case pathDirect:
		addr = net.JoinHostPort(gatewayIP, strconv.Itoa(redisPort))
	case pathSSHL:
		dir := filepath.Join(w.dir, "sshd")
		tunnel, err = w.spawn(w.laptop, "ssh-L", nil, "ssh", "-F", "/dev/null", "-p", strconv.Itoa(sshdPort),
			"-i", filepath.Join(dir, "client_ed25519"), "-o", "IdentitiesOnly=yes",
			"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile="+filepath.Join(dir, "known_hosts"),
			"-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
			"-N", "-L", fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", localPort, redisPort), "root@"+gatewayIP)
	default:
		tr := strings.TrimPrefix(p, "cachetun ")
		dir := filepath.Join(w.dir, "cachetun")
		home := filepath.Join(w.dir, "home")
		os.MkdirAll(home, 0o700)
		port := ctPort
		if tr == "ssh" {
			port = ctSSHPort
		}
		tunnel, err = w.spawn(w.laptop, "cachetun-connect-"+tr, []string{"HOME=" + home, "XDG_CONFIG_HOME=" + home, "SSH_AUTH_SOCK=",
			"QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true"},
			w.bin, "connect", "bench", "--server", net.JoinHostPort(gatewayIP, strconv.Itoa(port)), "--transport", tr,
			"-i", filepath.Join(dir, "client_ed25519"), "--known-hosts", filepath.Join(dir, "known_hosts-"+tr),
			"--accept-new-host-key", "--local-port", strconv.Itoa(localPort))
	}
	if err != nil {
		return res, err
	}
	defer stop(tunnel)
	dial := func() (net.Conn, error) { return dialIn(w.laptop, addr, 10*time.Second) }
	// The first reply: dial until the local port answers, then PING.
	var first time.Duration
	for {
		if w.ctx.Err() != nil {
			return res, w.ctx.Err()
		}
		if time.Since(start) > 30*time.Second {
			return res, fmt.Errorf("no reply through %s within 30 s (logs in %s)", p, w.dir)
		}
		c, err := dialIn(w.laptop, addr, 10*time.Second)
		if err != nil {
			time.Sleep(2 * time.Millisecond)
			continue
		}
		err = ping(c, 15*time.Second)
		c.Close()
		if err == nil {
			first = time.Since(start)
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if slices.Contains(w.workloads, wFirst) {
		res[wFirst] = ms(first)
	}
	// A workload that fails (a bulk transfer past -bulk-timeout on a lossy
	// link, say) leaves its cell empty; the others still run.
	var errs []error
	if slices.Contains(w.workloads, wNewConn) {
		var ds []float64
		for range 5 {
			t0 := time.Now()
			c, err := dial()
			if err == nil {
				err = ping(c, 10*time.Second)
				c.Close()
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("new connection + PING: %w", err))
				break
			}
			ds = append(ds, ms(time.Since(t0)))
		}
		if len(ds) == 5 {
			res[wNewConn] = median(ds)
		}
	}
	if slices.Contains(w.workloads, wGet50) {
		if ops, p99, err := w.get50(dial); err != nil {
			errs = append(errs, fmt.Errorf("GET -c 50: %w", err))
		} else {
			res[wGet50], res[wGet50p] = ops, p99
		}
	}
	if slices.Contains(w.workloads, wGetBig) {
		if v, err := w.bigGet(dial, 1, "wan:big", bigSize); err != nil {
			errs = append(errs, fmt.Errorf("GET of 32 MiB: %w", err))
		} else {
			res[wGetBig] = v
		}
		if v, err := w.bigSet(dial); err != nil {
			errs = append(errs, fmt.Errorf("SET of 32 MiB: %w", err))
		} else {
			res[wSetBig] = v
		}
	}
	if slices.Contains(w.workloads, wBulk8) {
		if v, err := w.bigGet(dial, bulkConns, "wan:bulk", bulkSize); err != nil {
			errs = append(errs, fmt.Errorf("8 parallel GETs: %w", err))
		} else {
			res[wBulk8] = v
		}
	}
	return res, errors.Join(errs...)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// get50 runs GET of a 3-byte value on 50 connections for get50Dur and
// returns ops/s and the p99 latency in ms.
func (w *wan) get50(dial func() (net.Conn, error)) (float64, float64, error) {
	conns := make([]net.Conn, getConns)
	for i := range conns {
		c, err := dial()
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return 0, 0, err
		}
		conns[i] = c
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	end := time.Now().Add(w.get50Dur)
	lat := make([][]time.Duration, getConns)
	errs := make([]error, getConns)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := bufio.NewReader(c)
			for time.Now().Before(end) {
				s := time.Now()
				if _, err := get(c, r, "wan:small", io.Discard, 10*time.Second); err != nil {
					errs[i] = err
					return
				}
				lat[i] = append(lat[i], time.Since(s))
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		return 0, 0, err
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return 0, 0, errors.New("no GET completed")
	}
	slices.Sort(all)
	return float64(len(all)) / el.Seconds(), ms(all[(len(all)*99)/100]), nil
}

// bigGet fetches key (size bytes) on n parallel connections and returns
// the aggregate MiB/s from the request to the last byte.
func (w *wan) bigGet(dial func() (net.Conn, error), n int, key string, size int) (float64, error) {
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := dial()
		if err != nil {
			return 0, err
		}
		defer c.Close()
		conns[i] = c
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	t0 := time.Now()
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var cw countWriter
			got, err := get(c, bufio.NewReaderSize(c, 256<<10), key, &cw, w.bulkCap)
			if err == nil && got != size {
				err = fmt.Errorf("GET %s: %d bytes, want %d", key, got, size)
			}
			if err != nil {
				err = fmt.Errorf("%w (%.1f of %d MiB arrived in %v)", err, float64(cw.n)/(1<<20), size>>20, time.Since(t0).Round(time.Second))
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return float64(n*size) / (1 << 20) / time.Since(t0).Seconds(), nil
}

// countWriter counts and discards.
type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// bigSet writes a 32 MiB value and returns MiB/s until redis's +OK.
func (w *wan) bigSet(dial func() (net.Conn, error)) (float64, error) {
	c, err := dial()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	t0 := time.Now()
	if err := set(c, bufio.NewReader(c), "wan:set", bigSize, w.bulkCap); err != nil {
		return 0, err
	}
	return float64(bigSize) / (1 << 20) / time.Since(t0).Seconds(), nil
}

// dialIn makes a TCP connection from inside namespace ns.
func dialIn(ns, addr string, timeout time.Duration) (c net.Conn, err error) {
	err = linkemu.InNetns(ns, func() error {
		d := net.Dialer{Timeout: timeout}
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	return c, err
}
