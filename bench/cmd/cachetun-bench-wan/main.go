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
// The workloads run from the laptop namespace: the time from starting the
// tunnel to the first reply and a new connection + PING (a bare TCP
// connect and an inline PING), GET with 50 connections (redis-benchmark:
// ops/s and p99), and, through go-redis, GET and SET of a 32 MiB value
// and 8 parallel GETs of an 8 MiB value, each cut at -bulk-timeout (see
// redis.go). Rounds are interleaved (every path once per round); tables
// hold medians with ratios to ssh -L and to direct. Its section of
// BENCHMARKS.md lies between its own markers. The run prints its expected
// length first (estimate.go; a full run is meant to stay under 15
// minutes on 2 cores) and what it took last.
//
// Needs root (namespaces, TUN, iptables). make bench-wan runs
//
//	go run ./bench/cmd/cachetun-bench-wan -bin bin/cachetun -out BENCHMARKS.md
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
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

	"github.com/cachetun/cachetun/bench/internal/sshdenv"
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

// The defaults keep a full run (6 links, 5 paths, 2 rounds) under 15
// minutes on a 2-core machine: GET -c 50 for 1.5 s per path (-n 50 / RTT
// × 1.5 s: 375 requests at 200 ms, 3,750 at 20 ms), and a transfer still
// under way after 3 s (15 RTT at 200 ms, past slow start) is cut and
// counts what had arrived. With 40 s, QUIC's transfers at 1 % loss alone
// took 2 minutes per path and round. With 2 s for GET -c 50 a full run
// took 14m13s (make bench-wan 14m29s) while the load average was 8-10.
const (
	defaultGet50   = 1500 * time.Millisecond
	defaultBulkCap = 3 * time.Second
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
	sshd      *sshdenv.Env
	// redisBenchmark is the redis-benchmark binary (GET -c 50).
	redisBenchmark string
	mu             sync.Mutex
	// results[link][path][workload] = one value per round
	results map[string]map[string]map[string][]float64
	errs    map[string]map[string]string
	// cuts[link][path][workload] = how far each cut transfer got
	cuts      map[string]map[string]map[string][]string
	redisAddr string
	tcpCC     string        // -tcp-cc, then what the namespaces use
	emu       *linkemu.Link // the link under test
	links     []link
	rounds    int
	started   time.Time
}

func main() {
	log.SetFlags(0)
	os.Exit(run())
}

func run() int {
	var bin, out, paths, links, workloads, tcpCC string
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
	flag.DurationVar(&get50, "get50-duration", defaultGet50, "length of each GET -c 50 run")
	flag.DurationVar(&bulkCap, "bulk-timeout", defaultBulkCap, "cut a transfer (32 MiB GET and SET, 8 × 8 MiB GETs) still under way after this long: its cell is what had arrived by then divided by the time, marked *")
	flag.DurationVar(&timeout, "timeout", 30*time.Minute, "abort the whole run after this long")
	flag.BoolVar(&keep, "keep", false, "keep the temp dir (logs, configs)")
	flag.StringVar(&tcpCC, "tcp-cc", "", "TCP congestion control in both namespaces (empty: what they inherit from the host): reno is the algorithm quic-go runs, cubic the default of most Linux distributions and of macOS; a namespace may set only those in /proc/sys/net/ipv4/tcp_allowed_congestion_control. The TCP paths (direct, ssh -L, cachetun tls and ssh) use it; cachetun quic always runs quic-go's NewReno")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Print("cachetun-bench-wan: error: needs root (it creates network namespaces, TUN devices and iptables rules); run it as root")
		return 2
	}
	w := &wan{log: log.New(os.Stderr, "", log.Ltime), rounds: rounds, get50Dur: get50, bulkCap: bulkCap,
		results: map[string]map[string]map[string][]float64{}, errs: map[string]map[string]string{},
		cuts: map[string]map[string]map[string][]string{}, started: time.Now(), tcpCC: tcpCC}
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
	typical, most := estimate(w.links, w.paths, w.workloads, w.rounds, w.get50Dur, w.bulkCap)
	w.log.Printf("%d link(s) × %d path(s) × %d round(s): about %v expected, at most %v if every transfer is cut at %v",
		len(w.links), len(w.paths), w.rounds, typical.Round(time.Second), most.Round(time.Second), w.bulkCap)
	err = w.main()
	defer func() {
		w.log.Printf("took %v (about %v was expected)", time.Since(w.started).Round(time.Second), typical.Round(time.Second))
	}()
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
	for _, t := range []string{"redis-server", "redis-benchmark", "ssh", "ssh-keygen", "iptables", "ip"} {
		p, err := exec.LookPath(t)
		if err != nil {
			return fmt.Errorf("%s not found in PATH (Debian: apt-get install redis-server redis-tools openssh-client openssh-server iptables iproute2)", t)
		}
		if t == "redis-benchmark" {
			w.redisBenchmark = p
		}
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
	if err := w.setTCPCC(); err != nil {
		return err
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
// setTCPCC sets -tcp-cc in both namespaces, or reads what they use, for
// the report: under random loss it decides the TCP paths' transfers
// (BBR ignores such loss, CUBIC and Reno do not).
func (w *wan) setTCPCC() error {
	if w.tcpCC != "" {
		for _, ns := range []string{w.laptop, w.gateway} {
			if err := w.sh(ns, "sysctl", "-q", "-w", "net.ipv4.tcp_congestion_control="+w.tcpCC); err != nil {
				return fmt.Errorf("-tcp-cc %s: %w (a namespace may set only what the host lists in /proc/sys/net/ipv4/tcp_allowed_congestion_control; as root on the host: sysctl -w net.ipv4.tcp_allowed_congestion_control=\"$(cat /proc/sys/net/ipv4/tcp_allowed_congestion_control) %s\")", w.tcpCC, err, w.tcpCC)
			}
		}
	}
	cc, err := w.tcpCCOf(w.gateway)
	w.tcpCC = cc
	return err
}

// tcpCCOf returns the TCP congestion control namespace ns runs.
func (w *wan) tcpCCOf(ns string) (string, error) {
	out, err := exec.CommandContext(w.ctx, "ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.tcp_congestion_control").Output()
	if err != nil {
		return "", fmt.Errorf("read the TCP congestion control of namespace %s: %w", ns, err)
	}
	return strings.TrimSpace(string(out)), nil
}

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
	w.sshd.Close()
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
	w.redisAddr = redisAddr
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
	rdb := newClient(w.gateway, redisAddr, 30*time.Second)
	defer rdb.Close()
	for _, kv := range []struct {
		k string
		n int
	}{{get50Key, 3}, {"wan:big", bigSize}, {"wan:bulk", bulkSize}} {
		if err := setValue(w.ctx, rdb.Client, kv.k, kv.n); err != nil {
			return fmt.Errorf("load %s: %w", kv.k, err)
		}
	}

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

// startSSHD starts the private sshd of the ssh -L path
// (bench/internal/sshdenv, as the loopback bench's) in the gateway
// namespace on every address.
func (w *wan) startSSHD() error {
	e, err := sshdenv.Setup(w.ctx, filepath.Join(w.dir, "sshd"), "", "cachetun-bench-wan", nil)
	if err != nil {
		return err
	}
	w.sshd = e
	conf := filepath.Join(e.Dir, "sshd_config")
	if _, err := e.WriteConfig(conf, "private sshd of cachetun-bench-wan, in its gateway namespace", "0.0.0.0", sshdPort); err != nil {
		return err
	}
	if _, err := w.spawn(w.gateway, "sshd", nil, sshdenv.SSHDArgs("", conf)...); err != nil {
		return err
	}
	if err := e.WriteKnownHosts(filepath.Join(e.Dir, "known_hosts"), gatewayIP, sshdPort); err != nil {
		return err
	}
	return w.waitFor(10*time.Second, "sshd to listen", func() bool {
		c, err := dialIn(w.gateway, "127.0.0.1:"+strconv.Itoa(sshdPort), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
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
	w.emu = emu
	defer func() { w.emu = nil }()
	w.log.Printf("link %s (%s)", l.name, l)
	w.results[l.name] = map[string]map[string][]float64{}
	w.errs[l.name] = map[string]string{}
	w.cuts[l.name] = map[string]map[string][]string{}
	for r := 0; r < w.rounds; r++ {
		for _, p := range w.paths {
			if w.ctx.Err() != nil {
				return w.ctx.Err()
			}
			t0 := time.Now()
			res, cuts, err := w.runPath(l, p)
			took := time.Since(t0)
			if err != nil {
				w.log.Printf("  round %d %s: %s", r+1, p, strings.ReplaceAll(err.Error(), "\n", "; "))
				if w.errs[l.name][p] == "" {
					w.errs[l.name][p] = strings.ReplaceAll(err.Error(), "\n", "; ")
				}
			}
			if w.results[l.name][p] == nil {
				w.results[l.name][p] = map[string][]float64{}
			}
			if w.cuts[l.name][p] == nil {
				w.cuts[l.name][p] = map[string][]string{}
			}
			var parts []string
			for _, k := range allWorkloads {
				if v, ok := res[k]; ok {
					w.results[l.name][p][k] = append(w.results[l.name][p][k], v)
					part := fmt.Sprintf("%s=%.1f", shortName[k], v)
					if note, ok := cuts[k]; ok {
						w.cuts[l.name][p][k] = append(w.cuts[l.name][p][k], note)
						part += "(cut: " + note + ")"
					}
					parts = append(parts, part)
				}
			}
			w.log.Printf("  round %d %-14s %s (%.1fs)", r+1, p, strings.Join(parts, " "), took.Seconds())
		}
	}
	c := emu.AtoB()
	d := emu.BtoA()
	w.log.Printf("  link counters laptop→gateway %+v, gateway→laptop %+v", c, d)
	return nil
}

// runPath starts one path's tunnel (none for direct), runs the workloads
// through it and stops it.
func (w *wan) runPath(l link, p string) (res map[string]float64, cuts map[string]string, err error) {
	res, cuts = map[string]float64{}, map[string]string{}
	addr := "127.0.0.1:" + strconv.Itoa(localPort)
	start := time.Now()
	var tunnel *exec.Cmd
	switch p {
	case pathDirect:
		addr = net.JoinHostPort(gatewayIP, strconv.Itoa(redisPort))
	case pathSSHL:
		tunnel, err = w.spawn(w.laptop, "ssh-L", nil, w.sshd.ClientArgs("", sshdPort, filepath.Join(w.sshd.Dir, "known_hosts"),
			"-N", "-L", fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", localPort, redisPort), "root@"+gatewayIP)...)
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
		return res, cuts, err
	}
	defer func() {
		t0 := time.Now()
		stop(tunnel)
		if d := time.Since(t0); d > 500*time.Millisecond {
			w.log.Printf("  %s took %v to stop", p, d.Round(10*time.Millisecond))
		}
	}()
	dial := func() (net.Conn, error) { return dialIn(w.laptop, addr, 10*time.Second) }
	// The first reply: dial until the local port answers, then PING.
	var first time.Duration
	for {
		if w.ctx.Err() != nil {
			return res, cuts, w.ctx.Err()
		}
		if time.Since(start) > 30*time.Second {
			return res, cuts, fmt.Errorf("no reply through %s within 30 s (logs in %s)", p, w.dir)
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
	// A workload that fails leaves its cell empty; the others still run.
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
		if ops, p99, err := w.get50(addr, l.rtt); err != nil {
			errs = append(errs, fmt.Errorf("GET -c 50: %w", err))
		} else {
			res[wGet50], res[wGet50p] = ops, p99
		}
	}
	// A transfer still under way at -bulk-timeout is cut: its cell is what
	// had arrived by then, divided by the bound, and marked.
	if !slices.ContainsFunc(w.workloads, func(k string) bool { return k == wGetBig || k == wSetBig || k == wBulk8 }) {
		return res, cuts, errors.Join(errs...)
	}
	getC, setC, bulkC, err := w.transferClients(addr)
	if err != nil {
		errs = append(errs, fmt.Errorf("transfers: %w", err))
		return res, cuts, errors.Join(errs...)
	}
	defer func() {
		for _, c := range append([]*oneConn{getC, setC}, bulkC...) {
			c.Close()
		}
	}()
	for _, t := range []struct {
		k   string
		run func() (transfer, error)
	}{
		{wGetBig, func() (transfer, error) { return w.bigGet([]*oneConn{getC}, "wan:big", bigSize) }},
		{wSetBig, func() (transfer, error) { return w.bigSet(setC, w.redisAddr) }},
		{wBulk8, func() (transfer, error) { return w.bigGet(bulkC, "wan:bulk", bulkSize) }},
	} {
		if !slices.Contains(w.workloads, t.k) {
			continue
		}
		v, err := t.run()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", strings.TrimSuffix(t.k, " (MiB/s)"), err))
			continue
		}
		res[t.k] = v.rate
		if v.cut {
			cuts[t.k] = v.note
			// What the cut transfer left in flight (in the tunnel's
			// buffers, the link's queue) must not slow the next one: a
			// QUIC SET right after a cut GET at 200 ms moved 0.7 MiB in
			// 3 s, 16-18 MiB once the link was quiet. The tunnel is
			// stopped after the last transfer.
			if t.k == wBulk8 {
				continue
			}
			if d := w.quiesce(l.rtt, 2*time.Second); d > 500*time.Millisecond {
				w.log.Printf("  %s: the link was busy for %v after the cut %s", p, d.Round(10*time.Millisecond), t.k)
			}
		}
	}
	return res, cuts, errors.Join(errs...)
}

// quiesce waits, at most bound, until the link has carried no more than a
// few packets either way in the last RTT (at least 100 ms), and returns
// how long it waited.
func (w *wan) quiesce(rtt, bound time.Duration) time.Duration {
	if w.emu == nil {
		return 0
	}
	window := max(rtt, 100*time.Millisecond)
	count := func() int64 { return w.emu.AtoB().Received + w.emu.BtoA().Received }
	t0 := time.Now()
	last, since := count(), time.Now()
	for time.Since(t0) < bound && w.ctx.Err() == nil {
		time.Sleep(window / 4)
		if n := count(); n-last > 3 {
			last, since = n, time.Now()
		} else if time.Since(since) >= window {
			break
		}
	}
	return time.Since(t0)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// dialIn makes a TCP connection from inside namespace ns ("": this
// process's own, as the tests use).
func dialIn(ns, addr string, timeout time.Duration) (c net.Conn, err error) {
	if ns == "" {
		return net.DialTimeout("tcp", addr, timeout)
	}
	err = linkemu.InNetns(ns, func() error {
		d := net.Dialer{Timeout: timeout}
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	return c, err
}
