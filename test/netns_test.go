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
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The network test bed of issue 12: two network namespaces that the test
// creates and deletes, "laptop" and "gateway", joined by a veth pair, with
// addresses from 10.253.0.0/16 that exist only inside them. The real
// `cachetun server` and a real redis-server run in "gateway", the real
// `cachetun connect` in "laptop", and the test's own TCP client dials the
// client's local port from inside "laptop" (a socket made in a namespace
// stays there). Events change the link under the running processes:
// loss, address changes, no address at all, black holes, UDP blocked,
// gateway restarts and crashes.
//
// Every iptables rule matches the veth interface only (-i), on INPUT in
// both namespaces: a drop on OUTPUT hands UDP senders an EPERM that no
// real network gives, and loopback (probe to client, gateway to redis)
// must keep working.

// netBedSeq makes namespace names and subnets unique within the process;
// the PID makes them unique across processes.
var netBedSeq atomic.Int32

// netBed is one laptop/gateway pair of namespaces.
type netBed struct {
	t testing.TB
	// Laptop and Gateway are the namespace names (ip netns).
	Laptop, Gateway string
	// LaptopDev and GatewayDev are the veth ends inside them.
	LaptopDev, GatewayDev string
	// GatewayIP is the gateway's veth address (no prefix).
	GatewayIP string

	subnet int // third octet of 10.253.subnet.0/24

	mu       sync.Mutex
	laptopIP string // the laptop's current veth address, "" while it has none
	nextHost int    // the host part of the laptop's next address
}

// requireRoot skips a test that needs network namespaces when not root
// (CI runs as root, so the tests run there).
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test creates network namespaces, veth pairs and iptables rules (CI runs as root)")
	}
	for _, bin := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s: %v", bin, err)
		}
	}
}

// newNetBed creates the two namespaces and the veth pair between them;
// they are deleted when the test ends, whether it passed or not.
func newNetBed(t testing.TB) *netBed {
	t.Helper()
	requireRoot(t)
	sweepStaleNetBeds(t)
	n := int(netBedSeq.Add(1))
	id := fmt.Sprintf("%d-%d", os.Getpid(), n)
	b := &netBed{
		t:          t,
		Laptop:     "ctn-laptop-" + id,
		Gateway:    "ctn-gw-" + id,
		LaptopDev:  "veth-laptop",
		GatewayDev: "veth-gw",
		subnet:     n % 250,
		nextHost:   10,
	}
	b.GatewayIP = fmt.Sprintf("10.253.%d.1", b.subnet)
	t.Cleanup(b.destroy)
	b.must("ip", "netns", "add", b.Laptop)
	b.must("ip", "netns", "add", b.Gateway)
	b.must("ip", "link", "add", b.LaptopDev, "netns", b.Laptop, "type", "veth", "peer", "name", b.GatewayDev, "netns", b.Gateway)
	for _, ns := range []struct{ ns, dev string }{{b.Laptop, b.LaptopDev}, {b.Gateway, b.GatewayDev}} {
		b.must("ip", "-n", ns.ns, "link", "set", "lo", "up")
		// A deleted primary address promotes a secondary instead of
		// taking every address of its subnet with it.
		b.mustIn(ns.ns, "sysctl", "-q", "-w", "net.ipv4.conf.all.promote_secondaries=1")
		b.mustIn(ns.ns, "sysctl", "-q", "-w", "net.ipv4.conf."+ns.dev+".promote_secondaries=1")
		b.must("ip", "-n", ns.ns, "link", "set", ns.dev, "up")
	}
	b.must("ip", "-n", b.Gateway, "addr", "add", b.GatewayIP+"/24", "dev", b.GatewayDev)
	b.mu.Lock()
	b.laptopIP = b.newLaptopIPLocked()
	b.mu.Unlock()
	b.must("ip", "-n", b.Laptop, "addr", "add", b.LaptopIP()+"/24", "dev", b.LaptopDev)
	return b
}

// sweepStaleNetBeds deletes the namespaces of test processes that no
// longer run (killed by a timeout before their cleanups ran): their
// names carry the creating process's PID.
func sweepStaleNetBeds(t testing.TB) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		name := f[0]
		var role string
		var pid, n int
		rest, ok := strings.CutPrefix(name, "ctn-")
		if !ok {
			continue
		}
		role, rest, _ = strings.Cut(rest, "-")
		if role != "laptop" && role != "gw" {
			continue
		}
		if _, err := fmt.Sscanf(rest, "%d-%d", &pid, &n); err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // still running: its own cleanup deletes it
		}
		if err := exec.Command("ip", "netns", "del", name).Run(); err == nil {
			t.Logf("deleted the stale network namespace %s (its test process %d is gone)", name, pid)
		}
	}
}

func (b *netBed) newLaptopIPLocked() string {
	ip := fmt.Sprintf("10.253.%d.%d", b.subnet, b.nextHost)
	b.nextHost++
	return ip
}

// destroy deletes both namespaces (the veth pair and every process's
// sockets in them go with them; processes were stopped by their own
// cleanups, which run first).
func (b *netBed) destroy() {
	for _, ns := range []string{b.Laptop, b.Gateway} {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
			b.t.Errorf("delete network namespace %s: %v: %s", ns, err, out)
		}
	}
}

// LaptopIP returns the laptop's current address ("" while it has none).
func (b *netBed) LaptopIP() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.laptopIP
}

// run runs a command (bounded to 20 s) and returns its combined output.
func (b *netBed) run(argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func (b *netBed) must(argv ...string) string {
	b.t.Helper()
	out, err := b.run(argv...)
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

// In returns argv prefixed to run in namespace ns.
func In(ns string, argv ...string) []string {
	return append([]string{"ip", "netns", "exec", ns}, argv...)
}

func (b *netBed) mustIn(ns string, argv ...string) string {
	b.t.Helper()
	return b.must(In(ns, argv...)...)
}

// iptables adds rule (after "-A INPUT" or "-I INPUT") in both namespaces,
// each matching its veth end, and returns a func that removes them again.
func (b *netBed) iptables(rule ...string) (undo func()) {
	b.t.Helper()
	var added [][]string
	for _, ns := range []struct{ ns, dev string }{{b.Laptop, b.LaptopDev}, {b.Gateway, b.GatewayDev}} {
		spec := append([]string{"INPUT", "-i", ns.dev}, rule...)
		b.mustIn(ns.ns, append([]string{"iptables", "-w", "5", "-I"}, spec...)...)
		added = append(added, In(ns.ns, append([]string{"iptables", "-w", "5", "-D"}, spec...)...))
	}
	var once sync.Once
	undo = func() {
		once.Do(func() {
			for _, argv := range added {
				if _, err := b.run(argv...); err != nil {
					b.t.Errorf("remove iptables rule: %v", err)
				}
			}
		})
	}
	b.t.Cleanup(undo)
	return undo
}

// Loss drops each packet arriving on either veth end with probability p
// (so p each way), until undo.
func (b *netBed) Loss(p float64) (undo func()) {
	return b.iptables("-m", "statistic", "--mode", "random", "--probability", fmt.Sprintf("%.4f", p), "-j", "DROP")
}

// Dropped returns how many packets the INPUT DROP rules have dropped in
// the laptop and in the gateway namespace: proof that an event's rules
// match the traffic.
func (b *netBed) Dropped() (laptop, gateway int64) {
	b.t.Helper()
	count := func(ns string) int64 {
		var n int64
		for _, line := range strings.Split(b.mustIn(ns, "iptables", "-w", "5", "-L", "INPUT", "-v", "-x", "-n"), "\n") {
			f := strings.Fields(line)
			if len(f) > 2 && f[2] == "DROP" {
				var pkts int64
				if _, err := fmt.Sscan(f[0], &pkts); err == nil {
					n += pkts
				}
			}
		}
		return n
	}
	return count(b.Laptop), count(b.Gateway)
}

// BlackHole drops everything both ways, with no error to any sender,
// until undo.
func (b *netBed) BlackHole() (undo func()) {
	return b.iptables("-j", "DROP")
}

// DropUDP drops every UDP packet both ways (TCP still passes) until undo.
func (b *netBed) DropUDP() (undo func()) {
	return b.iptables("-p", "udp", "-j", "DROP")
}

// ChangeAddress gives the laptop a new address and deletes the old one
// (add new, delete old: promote_secondaries makes the new one primary and
// keeps the subnet's route, now with the new source): sockets bound to
// the old address see it vanish. It returns the new address.
func (b *netBed) ChangeAddress() string {
	b.t.Helper()
	b.mu.Lock()
	old, next := b.laptopIP, b.newLaptopIPLocked()
	b.mu.Unlock()
	b.mustIn(b.Laptop, "ip", "addr", "add", next+"/24", "dev", b.LaptopDev)
	if old != "" {
		b.mustIn(b.Laptop, "ip", "addr", "del", old+"/24", "dev", b.LaptopDev)
	}
	// Any route still naming the old source moves to the new one.
	b.mustIn(b.Laptop, "ip", "route", "replace", fmt.Sprintf("10.253.%d.0/24", b.subnet), "dev", b.LaptopDev, "src", next)
	b.mu.Lock()
	b.laptopIP = next
	b.mu.Unlock()
	return next
}

// RemoveAddress deletes the laptop's address (and with it the route to
// the gateway): sends fail with ENETUNREACH until AddAddress.
func (b *netBed) RemoveAddress() {
	b.t.Helper()
	b.mu.Lock()
	old := b.laptopIP
	b.laptopIP = ""
	b.mu.Unlock()
	if old != "" {
		b.mustIn(b.Laptop, "ip", "addr", "del", old+"/24", "dev", b.LaptopDev)
	}
}

// AddAddress gives the laptop a new address (after RemoveAddress) and
// returns it.
func (b *netBed) AddAddress() string {
	b.t.Helper()
	b.mu.Lock()
	next := b.newLaptopIPLocked()
	b.laptopIP = next
	b.mu.Unlock()
	b.mustIn(b.Laptop, "ip", "addr", "add", next+"/24", "dev", b.LaptopDev)
	return next
}

// NoAddress removes the laptop's address for d, then adds a new one.
func (b *netBed) NoAddress(d time.Duration) string {
	b.t.Helper()
	b.RemoveAddress()
	time.Sleep(d) // the event itself lasts d: nothing to wait on
	return b.AddAddress()
}

// bgProc is a background process (in a namespace) that the test stops.
type bgProc struct {
	cmd    *exec.Cmd
	out    syncBuf
	exited chan struct{}
	err    error
}

// startBg starts argv with stdout and stderr collected; it is stopped
// (SIGTERM, SIGKILL after 5 s) when the test ends.
func startBg(t testing.TB, env []string, argv ...string) *bgProc {
	t.Helper()
	p := &bgProc{exited: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	p.cmd.Env = append(os.Environ(), env...)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", strings.Join(argv, " "), err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("output of %s:\n%s", strings.Join(argv, " "), p.out.String())
		}
	})
	return p
}

// Stop sends SIGTERM and waits, SIGKILL after 5 s. Idempotent.
func (p *bgProc) Stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// Output returns what the process wrote so far.
func (p *bgProc) Output() string { return p.out.String() }

// StartRedis runs a real redis-server in the gateway namespace on its
// loopback (127.0.0.1:6379 there: the namespace has its own ports) and
// returns that address.
func (b *netBed) StartRedis(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skipf("needs redis-server: %v", err)
	}
	addr := "127.0.0.1:6379"
	p := startBg(t, nil, In(b.Gateway, bin, "--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no")...)
	waitFor(t, 10*time.Second, "redis-server in the gateway namespace to answer PING", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("redis-server exited: %v\n%s", p.err, p.Output())
		default:
		}
		c, err := b.DialGateway(addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		r, err := respDo(c, bufio.NewReader(c), time.Second, "PING")
		return err == nil && r == "+PONG"
	})
	return addr
}

// StartGateway runs the real `cachetun server` in the gateway namespace,
// listening on GatewayIP:port (QUIC and TLS) and GatewayIP:sshPort.
func (b *netBed) StartGateway(t testing.TB, port, sshPort int, o gatewayProcOpts) *gatewayProc {
	t.Helper()
	o.Wrap = In(b.Gateway)
	o.Listen = net.JoinHostPort(b.GatewayIP, fmt.Sprint(port))
	o.SSHListen = net.JoinHostPort(b.GatewayIP, fmt.Sprint(sshPort))
	return startGatewayProc(t, o)
}

// netConnect is a real `cachetun connect` in the laptop namespace.
type netConnect struct {
	*bgProc
	// Local is the local address of the first node (in the laptop
	// namespace: dial it with netBed.DialLaptop).
	Local string
}

// StartConnect runs `cachetun connect target` in the laptop namespace
// against servers (tried in order) over transport, with its first node on
// 127.0.0.1:localPort, and waits (20 s at most) until it prints that
// node's line.
func (b *netBed) StartConnect(t testing.TB, transport, target string, k key, knownHosts string, localPort int, servers ...string) *netConnect {
	t.Helper()
	home := t.TempDir()
	argv := In(b.Laptop, cachetunBinary(t), "connect", target,
		"--server", strings.Join(servers, ","),
		"--transport", transport,
		"-i", k.Path,
		"--known-hosts", knownHosts,
		"--local-port", fmt.Sprint(localPort))
	p := startBg(t, []string{"HOME=" + home, "SSH_AUTH_SOCK=", "XDG_CONFIG_HOME=" + home, "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true"}, argv...)
	c := &netConnect{bgProc: p, Local: fmt.Sprintf("127.0.0.1:%d", localPort)}
	waitFor(t, 20*time.Second, "cachetun connect to print its local port", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("cachetun connect exited: %v\n%s", p.err, p.Output())
		default:
		}
		return strings.Contains(p.Output(), c.Local)
	})
	return c
}

// DialLaptop dials addr from inside the laptop namespace.
func (b *netBed) DialLaptop(addr string, timeout time.Duration) (net.Conn, error) {
	return dialInNetns(b.Laptop, "tcp", addr, timeout)
}

// DialGateway dials addr from inside the gateway namespace.
func (b *netBed) DialGateway(addr string, timeout time.Duration) (net.Conn, error) {
	return dialInNetns(b.Gateway, "tcp", addr, timeout)
}

// dialInNetns makes a socket of network ("tcp", "udp") in network
// namespace ns and connects it to addr: the thread enters ns for the socket(2) and connect(2) calls
// and goes back; the socket stays in ns for its whole life.
func dialInNetns(ns, network, addr string, timeout time.Duration) (net.Conn, error) {
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", ns, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("open this thread's network namespace: %w", err)
	}
	defer orig.Close()
	if err := setns(target); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter network namespace %s: %w", ns, err)
	}
	d := net.Dialer{Timeout: timeout}
	c, dialErr := d.Dial(network, addr)
	if err := setns(orig); err != nil {
		// The thread stays locked: Go ends it with the goroutine rather
		// than run other goroutines in the wrong namespace.
		if c != nil {
			c.Close()
		}
		return nil, fmt.Errorf("leave network namespace %s: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return c, dialErr
}

func setns(f *os.File) error {
	return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
}

// respDo sends one RESP command and reads one reply line (simple
// string, error or integer; a bulk string's payload), within timeout.
func respDo(c net.Conn, r *bufio.Reader, timeout time.Duration, args ...string) (string, error) {
	if err := respSend(c, timeout, args...); err != nil {
		return "", err
	}
	return respRead(c, r, timeout)
}

func respSend(c net.Conn, timeout time.Duration, args ...string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	_, err := c.Write([]byte(b.String()))
	return err
}

// respRead reads one reply: "+OK", "-ERR ...", ":5", or a bulk string's
// payload ("$-1" for nil).
func respRead(c net.Conn, r *bufio.Reader, timeout time.Duration) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if !strings.HasPrefix(line, "$") || line == "$-1" {
		return line, nil
	}
	var n int
	if _, err := fmt.Sscanf(line, "$%d", &n); err != nil {
		return "", fmt.Errorf("bad bulk header %q", line)
	}
	buf := make([]byte, n+2)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// errTimeout reports whether err is a deadline that passed.
func errTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestNet_Bed checks the test bed itself: the namespaces reach each
// other only over the veth pair, and each event does to a socket what it
// claims (a black hole times out, UDP drops leave TCP alone, a removed
// address makes sends fail with ENETUNREACH, a changed address leaves a
// socket bound to the old one unable to send).
func TestNet_Bed(t *testing.T) {
	b := newNetBed(t)
	redisAddr := b.StartRedis(t)
	// A TCP listener in the gateway namespace on its veth address.
	l := startBg(t, nil, In(b.Gateway, "socat", "TCP-LISTEN:7000,bind="+b.GatewayIP+",reuseaddr,fork", "EXEC:/bin/cat")...)
	gwTCP := net.JoinHostPort(b.GatewayIP, "7000")
	echo := func(timeout time.Duration) error {
		c, err := b.DialLaptop(gwTCP, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte("x")); err != nil {
			return err
		}
		buf := make([]byte, 1)
		_, err = io.ReadFull(c, buf)
		return err
	}
	waitFor(t, 10*time.Second, "the socat echo in the gateway namespace", func() bool { return echo(time.Second) == nil })
	_ = l

	// The laptop cannot reach the gateway's redis (its loopback).
	if c, err := b.DialLaptop(redisAddr, time.Second); err == nil {
		c.Close()
		t.Fatalf("the laptop namespace reached %s: that is the gateway namespace's loopback", redisAddr)
	}

	undo := b.BlackHole()
	if err := echo(time.Second); err == nil || !errTimeout(err) {
		t.Fatalf("echo through a black hole: %v, want a timeout", err)
	}
	undo()
	if err := echo(5 * time.Second); err != nil {
		t.Fatalf("echo after the black hole: %v", err)
	}

	undo = b.DropUDP()
	if err := echo(5 * time.Second); err != nil {
		t.Fatalf("TCP echo with UDP dropped: %v", err)
	}
	undo()

	// A UDP socket connected before the address goes away.
	u, err := dialInNetns(b.Laptop, "udp", net.JoinHostPort(b.GatewayIP, "7001"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.Write([]byte("x")); err != nil {
		t.Fatalf("UDP send with an address: %v", err)
	}
	b.RemoveAddress()
	if _, err := u.Write([]byte("x")); !errors.Is(err, syscall.ENETUNREACH) && !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("UDP send with no address: %v, want ENETUNREACH", err)
	}
	if _, err := dialInNetns(b.Laptop, "udp", net.JoinHostPort(b.GatewayIP, "7001"), time.Second); !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("new UDP socket with no address: %v, want ENETUNREACH", err)
	}
	first := b.AddAddress()
	if err := echo(5 * time.Second); err != nil {
		t.Fatalf("echo from the new address %s: %v", first, err)
	}

	// An address change: a socket bound to the old address cannot send.
	old := b.LaptopIP()
	bound, err := dialInNetns(b.Laptop, "udp", net.JoinHostPort(b.GatewayIP, "7001"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer bound.Close()
	if got := bound.LocalAddr().(*net.UDPAddr).IP.String(); got != old {
		t.Fatalf("UDP socket's source %s, want the laptop's address %s", got, old)
	}
	next := b.ChangeAddress()
	if next == old {
		t.Fatal("ChangeAddress kept the address")
	}
	if _, err := bound.Write([]byte("x")); err == nil {
		t.Fatalf("UDP send from the deleted address %s succeeded", old)
	}
	if err := echo(5 * time.Second); err != nil {
		t.Fatalf("echo from the changed address %s: %v", next, err)
	}
	out := b.mustIn(b.Laptop, "ip", "-4", "-o", "addr", "show", "dev", b.LaptopDev)
	if !strings.Contains(out, next+"/24") || strings.Contains(out, old+"/") {
		t.Fatalf("laptop addresses after the change: %s", out)
	}
}

// Ports inside the gateway namespace (it has its own port space).
const (
	netGatewayPort    = 4433
	netGatewaySSHPort = 2222
	netLocalPort      = 16379
)

// netRig is a test bed with redis-server and one gateway process in
// "gateway" and a key that may use its target "cache".
type netRig struct {
	*netBed
	Redis      string // redis-server's address in the gateway namespace
	Key        key
	Gateways   []*gatewayProc
	KnownHosts string
}

// newNetRig starts n gateway processes (ports 4433+i and 2222+i) in front
// of one redis-server, with limits merged into each one's server.yaml.
func newNetRig(t testing.TB, n int, limits map[string]string) *netRig {
	t.Helper()
	b := newNetBed(t)
	r := &netRig{netBed: b, Redis: b.StartRedis(t), Key: newKey(t, "laptop")}
	var hosts []string
	for i := range n {
		g := b.StartGateway(t, netGatewayPort+i, netGatewaySSHPort+i, gatewayProcOpts{
			Targets:    map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", r.Redis)},
			Authorized: []string{r.Key.Line},
			Limits:     limits,
		})
		r.Gateways = append(r.Gateways, g)
		hosts = append(hosts, knownHostsLine(g.Addr, g.HostKey), knownHostsLine(g.SSHAddr, g.HostKey))
	}
	r.KnownHosts = writeKnownHostsLines(t, hosts)
	return r
}

func writeKnownHostsLines(t testing.TB, lines []string) string {
	t.Helper()
	path := t.TempDir() + "/known_hosts"
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// netTransports are the columns of issue 12's table: "quic" is the
// `auto` transport (QUIC first, TLS when QUIC fails), as users run it.
var netTransports = []struct{ Name, Flag string }{
	{"quic", "auto"},
	{"tls", "tls"},
	{"ssh", "ssh"},
}

// Connect starts `cachetun connect cache` in the laptop namespace over
// transport (a netTransports name), listing every gateway in order. Each
// transport has its own local port (16379 + its column), so the three
// clients can run side by side through one event.
func (r *netRig) Connect(t testing.TB, transport string) *netConnect {
	t.Helper()
	flag, port := transport, netLocalPort+len(netTransports)
	for i, tr := range netTransports {
		if tr.Name == transport {
			flag, port = tr.Flag, netLocalPort+i
		}
	}
	var servers []string
	for _, g := range r.Gateways {
		servers = append(servers, g.ServerAddr(transport))
	}
	c := r.StartConnect(t, flag, "cache", r.Key, r.KnownHosts, port, servers...)
	if want := "via " + transport; !strings.Contains(c.Output(), want) {
		t.Fatalf("cachetun connect did not start %s:\n%s", want, c.Output())
	}
	return c
}

// heldConn is the probe of issue 12: one TCP connection through the
// client's local port, opened before the event, that counts with INCR so
// that a lost, duplicated or reordered request shows in the numbers.
type heldConn struct {
	b    *netBed
	c    net.Conn
	r    *bufio.Reader
	key  string
	n    int    // the counter's value after the last reply
	sent bool   // a request is in flight
	err  string // how the connection was lost, "" while kept
}

var heldSeq atomic.Int32

// openHeld opens the probe connection and checks one request on it.
func openHeld(t testing.TB, b *netBed, local string) *heldConn {
	t.Helper()
	c, err := b.DialLaptop(local, 5*time.Second)
	if err != nil {
		t.Fatalf("dial the local port %s: %v", local, err)
	}
	t.Cleanup(func() { c.Close() })
	h := &heldConn{b: b, c: c, r: bufio.NewReader(c), key: fmt.Sprintf("held:%d:%d", os.Getpid(), heldSeq.Add(1))}
	if !h.Request(10 * time.Second) {
		t.Fatalf("the held connection's first request: %s", h.err)
	}
	return h
}

// Send sends the next INCR without waiting for its reply (the request
// sent during the event). It returns false once the connection is lost.
func (h *heldConn) Send() bool {
	if h.err != "" {
		return false
	}
	if err := respSend(h.c, 5*time.Second, "INCR", h.key); err != nil {
		h.err = fmt.Sprintf("send: %v", err)
		return false
	}
	h.sent = true
	return true
}

// Receive reads the reply to the request Send sent, waiting up to
// timeout, and checks it is the next count.
func (h *heldConn) Receive(timeout time.Duration) bool {
	if h.err != "" {
		return false
	}
	got, err := respRead(h.c, h.r, timeout)
	if err != nil {
		switch {
		case errTimeout(err):
			h.err = fmt.Sprintf("no reply within %v", timeout.Round(time.Second))
		case errors.Is(err, io.EOF):
			h.err = "connection ended (EOF)"
		default:
			h.err = fmt.Sprintf("connection ended (%v)", err)
		}
		return false
	}
	if want := fmt.Sprintf(":%d", h.n+1); got != want {
		h.err = fmt.Sprintf("reply %q, want %q: a request lost or repeated", got, want)
		return false
	}
	h.n++
	h.sent = false
	return true
}

// Request sends one INCR and reads its reply.
func (h *heldConn) Request(timeout time.Duration) bool {
	return h.Send() && h.Receive(timeout)
}

// Pipeline sends n INCRs in one write and reads their n replies, all
// within timeout: each must be the next count.
func (h *heldConn) Pipeline(n int, timeout time.Duration) bool {
	if h.err != "" {
		return false
	}
	deadline := time.Now().Add(timeout)
	var b strings.Builder
	for range n {
		fmt.Fprintf(&b, "*2\r\n$4\r\nINCR\r\n$%d\r\n%s\r\n", len(h.key), h.key)
	}
	// Write and read at once: a big batch must not wait on its own
	// replies filling the socket buffers.
	werr := make(chan error, 1)
	go func() {
		_ = h.c.SetWriteDeadline(deadline)
		_, err := h.c.Write([]byte(b.String()))
		werr <- err
	}()
	for range n {
		h.sent = true
		if !h.Receive(time.Until(deadline)) {
			<-werr
			return false
		}
	}
	if err := <-werr; err != nil {
		h.err = fmt.Sprintf("send: %v", err)
		return false
	}
	return true
}

// Kept reports whether the connection is still the same one with every
// reply correct; Lost says how it was lost.
func (h *heldConn) Kept() bool   { return h.err == "" }
func (h *heldConn) Lost() string { return h.err }

// newConnAfter measures how long after now a NEW connection through local
// first answers PING (each attempt bounded to 1 s), giving up after
// bound: it returns the time and whether one answered.
func newConnAfter(b *netBed, local string, bound time.Duration) (time.Duration, bool) {
	start := time.Now()
	for {
		if ping(b, local, time.Second) {
			return time.Since(start), true
		}
		if time.Since(start) > bound {
			return time.Since(start), false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ping(b *netBed, local string, timeout time.Duration) bool {
	c, err := b.DialLaptop(local, timeout)
	if err != nil {
		return false
	}
	defer c.Close()
	got, err := respDo(c, bufio.NewReader(c), timeout, "PING")
	return err == nil && got == "+PONG"
}

// netOutcome is one measured cell of issue 12's table.
type netOutcome struct {
	Kept    bool
	Lost    string        // how the held connection was lost
	NewOK   bool          // a new connection answered within the bound
	NewTook time.Duration // how long after the event new connections took
}

func (o netOutcome) String() string {
	var b strings.Builder
	if o.Kept {
		b.WriteString("kept")
	} else {
		b.WriteString("lost: " + o.Lost)
	}
	if o.NewOK {
		fmt.Fprintf(&b, "; new connections work %.1fs after the event", o.NewTook.Seconds())
	} else {
		fmt.Fprintf(&b, "; new connections still fail %.0fs after the event", o.NewTook.Seconds())
	}
	return b.String()
}

// TestNet_HeldProbe checks the probe on a quiet link, on every
// transport: kept, counts right, new connections at once; and that it
// reports a connection that the gateway's end closes as lost.
func TestNet_HeldProbe(t *testing.T) {
	r := newNetRig(t, 1, nil)
	for _, tr := range netTransports {
		t.Run(tr.Name, func(t *testing.T) {
			c := r.Connect(t, tr.Name)
			h := openHeld(t, r.netBed, c.Local)
			for range 3 {
				if !h.Request(5 * time.Second) {
					t.Fatalf("request on a quiet link: %s", h.Lost())
				}
			}
			if took, ok := newConnAfter(r.netBed, c.Local, 5*time.Second); !ok {
				t.Fatalf("no new connection within %v", took)
			}
			// CLIENT KILL on the server ends the upstream connection: the
			// probe must see that as lost.
			if _, err := r.run(In(r.Gateway, "redis-cli", "-p", "6379", "CLIENT", "KILL", "TYPE", "normal")...); err != nil {
				t.Fatal(err)
			}
			if h.Request(5*time.Second) || h.Kept() {
				t.Fatal("the probe did not notice its upstream connection being killed")
			}
			t.Logf("after CLIENT KILL the probe reports: %s", h.Lost())
			c.Stop()
		})
	}
}
