package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/server"
)

// transports is the list every conformance test runs over.
var transports = []string{"quic", "tls", "ssh"}

func hasSSH() bool {
	for _, tr := range transports {
		if tr == "ssh" {
			return true
		}
	}
	return false
}

// forEachTransport runs body once per transport as a subtest.
func forEachTransport(t *testing.T, body func(t *testing.T, transport string)) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) { body(t, tr) })
	}
}

// tlog is an slog handler output that writes to t.Log and keeps a copy
// for assertions.
type tlog struct {
	t  testing.TB
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *tlog) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.b.Write(p)
	l.mu.Unlock()
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (l *tlog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitLog waits until the log holds substr.
func (l *tlog) waitLog(t testing.TB, substr string) {
	t.Helper()
	waitFor(t, 10*time.Second, "log line "+substr, func() bool { return strings.Contains(l.String(), substr) })
}

func newTestLogger(t testing.TB) (*slog.Logger, *tlog) {
	tl := &tlog{t: t}
	var done bool
	var mu sync.Mutex
	t.Cleanup(func() { mu.Lock(); done = true; mu.Unlock() })
	w := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		d := done
		mu.Unlock()
		if d { // t.Log after the test ended panics
			return len(p), nil
		}
		return tl.Write(p)
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})), tl
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// key is a client key pair on disk.
type key struct {
	Path string
	Pub  ssh.PublicKey
	// Line is the authorized_keys line (without options).
	Line string
}

func newKey(t testing.TB, comment string) key {
	t.Helper()
	path := filepath.Join(t.TempDir(), "id_ed25519")
	pub, err := auth.GenerateKey(path, comment)
	if err != nil {
		t.Fatal(err)
	}
	return key{Path: path, Pub: pub, Line: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + " " + comment}
}

// gateway is an in-process cachetun server on loopback ports.
type gateway struct {
	Dir     string
	Config  *server.Config
	Srv     *server.Server
	Log     *tlog
	HostKey ssh.PublicKey
	// Addr is the shared QUIC (UDP) and TLS (TCP) address; SSHAddr the SSH one.
	Addr    string
	SSHAddr string

	noQUIC, noSSH bool // transports disabled by an option

	cancel context.CancelFunc // ends Run, which drains
	runErr chan error         // Run's result
	once   sync.Once
}

// withoutQUIC disables the QUIC listener (UDP gets no answer).
func withoutQUIC(c *server.Config) { c.Listen.QUIC = "" }

// gatewayOpt adjusts the configuration before the server starts.
type gatewayOpt func(*server.Config)

// startGateway starts a gateway with the given targets and authorized_keys
// lines. QUIC and TLS share one port number, as in production.
func startGateway(t testing.TB, targets map[string]*server.Target, authorized []string, opts ...gatewayOpt) *gateway {
	t.Helper()
	dir := t.TempDir()
	hostKey := filepath.Join(dir, "host_ed25519")
	if _, err := auth.GenerateKey(hostKey, "test-host"); err != nil {
		t.Fatal(err)
	}
	ak := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(ak, []byte(strings.Join(authorized, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.HostKey = hostKey
	cfg.AuthorizedKeys = ak
	cfg.Targets = targets
	cfg.Limits.DrainTimeout = 3 * time.Second
	cfg.Version = "v0.0.0-harness" // not the default: tests see the version plumbed through
	for _, o := range opts {
		o(cfg)
	}
	g := &gateway{Dir: dir, Config: cfg, noQUIC: cfg.Listen.QUIC == "", noSSH: cfg.Listen.SSH == "" || !hasSSH()}
	g.start(t, "127.0.0.1:0")
	return g
}

// start listens; addr "127.0.0.1:0" picks a port free for both TCP and UDP.
func (g *gateway) start(t testing.TB, addr string) {
	t.Helper()
	cfg := g.Config
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logger, tl := newTestLogger(t)
	if g.Log != nil { // restart: keep one log
		tl = g.Log
		logger = slog.New(slog.NewTextHandler(writerFunc(tl.Write), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	g.Log = tl
	var (
		srv    *server.Server
		ctx    context.Context
		cancel context.CancelFunc
		runErr chan error
	)
	for attempt := 0; ; attempt++ {
		quicTLS := addr
		if addr == "127.0.0.1:0" {
			quicTLS = freeTCPUDPPort(t)
		}
		cfg.Listen.QUIC, cfg.Listen.TLS = quicTLS, quicTLS
		if g.noQUIC {
			cfg.Listen.QUIC = ""
		}
		switch {
		case g.noSSH:
			cfg.Listen.SSH = ""
		case g.SSHAddr != "":
			cfg.Listen.SSH = g.SSHAddr
		default:
			cfg.Listen.SSH = "127.0.0.1:0"
		}
		var err error
		if srv, err = server.New(cfg, logger); err != nil {
			t.Fatal(err)
		}
		ctx, cancel = context.WithCancel(context.Background())
		runErr = make(chan error, 1)
		go func() { runErr <- srv.Run(ctx) }()
		select {
		case <-srv.Ready():
		case err = <-runErr:
		}
		if err == nil {
			break
		}
		cancel()
		if attempt >= 5 || addr != "127.0.0.1:0" {
			t.Fatalf("gateway listen: %v", err)
		}
	}
	g.Srv = srv
	g.HostKey = srv.HostPublicKey()
	a := srv.Addrs()
	g.Addr = cfg.Listen.TLS
	if a.SSH != nil {
		g.SSHAddr = a.SSH.String()
	}
	g.cancel, g.runErr = cancel, runErr
	g.once = sync.Once{}
	t.Cleanup(g.Stop)
}

// Stop drains and stops the gateway (limits.drain_timeout, 3 s here,
// bounds the drain); idempotent.
func (g *gateway) Stop() {
	g.once.Do(func() {
		g.cancel()
		<-g.runErr
	})
}

// Kill stops the gateway abruptly: sessions are closed without draining.
func (g *gateway) Kill() {
	g.once.Do(func() {
		g.Srv.Close()
		g.cancel()
		<-g.runErr
	})
}

// Restart starts a new server process-equivalent on the same ports.
func (g *gateway) Restart(t testing.TB) {
	t.Helper()
	g.start(t, g.Addr)
}

// KnownHosts writes a known_hosts file that pins the gateway for both of
// its ports.
func (g *gateway) KnownHosts(t testing.TB) string {
	t.Helper()
	return writeKnownHosts(t, g.HostKey, g.Addr, g.SSHAddr)
}

// writeKnownHosts writes a known_hosts file that pins k at each of addrs
// (empty ones skipped) and returns its path.
func writeKnownHosts(t testing.TB, k ssh.PublicKey, addrs ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "known_hosts")
	var b strings.Builder
	for _, a := range addrs {
		if a != "" {
			b.WriteString(knownHostsLine(a, k))
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func knownHostsLine(addr string, k ssh.PublicKey) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("[%s]:%s %s", host, port, ssh.MarshalAuthorizedKey(k))
}

// ServerAddr returns the address a client of transport dials.
func (g *gateway) ServerAddr(transport string) string {
	if transport == "ssh" {
		return g.SSHAddr
	}
	return g.Addr
}

// freeTCPUDPPort returns a loopback address whose port was free for both
// TCP and UDP a moment ago (the listeners are closed before returning, so
// another process could still take it: callers retry).
func freeTCPUDPPort(t testing.TB) string {
	t.Helper()
	for i := 0; i < 20; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return addr
	}
	t.Fatal("no port free for both TCP and UDP")
	return ""
}

// conn is a running `cachetun connect` (the client package, in process).
type connect struct {
	Client *client.Client
	Out    *bytes.Buffer
	Log    *tlog
	Err    chan error // Run's result
	cancel context.CancelFunc
}

// connectOpt adjusts client options.
type connectOpt func(*client.Options)

// startConnect runs a client for target over transport and waits until its
// listeners are up (or Run fails: then the error is returned).
func startConnect(t testing.TB, g gatewayEndpoint, transport, target string, k key, opts ...connectOpt) (*connect, error) {
	t.Helper()
	logger, tl := newTestLogger(t)
	zero := 0
	o := client.Options{
		Profile:        target,
		Servers:        []string{g.ServerAddr(transport)},
		Target:         target,
		Transport:      transport,
		Identity:       k.Path,
		LocalPort:      &zero,
		KnownHosts:     g.KnownHosts(t),
		Logger:         logger,
		WaitForSession: 10 * time.Second,
		Ping:           2 * time.Second,
	}
	for _, f := range opts {
		f(&o)
	}
	var out bytes.Buffer
	o.Out = &syncWriter{w: &out}
	cl, err := client.New(o)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &connect{Client: cl, Out: &out, Log: tl, Err: make(chan error, 1), cancel: cancel}
	go func() { c.Err <- cl.Run(ctx) }()
	select {
	case <-cl.Ready():
	case err := <-c.Err:
		cancel()
		return nil, err
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("client did not come up within 20s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-c.Err:
		case <-time.After(15 * time.Second):
			t.Error("client did not stop within 15s of cancel")
		}
	})
	return c, nil
}

// mustConnect is startConnect that fails the test on error.
func mustConnect(t testing.TB, g gatewayEndpoint, transport, target string, k key, opts ...connectOpt) *connect {
	t.Helper()
	c, err := startConnect(t, g, transport, target, k, opts...)
	if err != nil {
		t.Fatalf("connect %s over %s: %v", target, transport, err)
	}
	return c
}

// Local returns the local address that node is exposed on.
func (c *connect) Local(t testing.TB, node string) string {
	t.Helper()
	a, ok := c.Client.LocalAddrs()[node]
	if !ok {
		t.Fatalf("no local port for node %s (have %v)", node, c.Client.LocalAddrs())
	}
	return a
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// errText returns err's message and its hint, as the CLI would print
// them.
func errText(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	var ce *control.Error
	if errors.As(err, &ce) && ce.Hint != "" {
		msg += "\nhint: " + ce.Hint
	}
	return msg
}
