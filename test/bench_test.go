package test

// End-to-end benchmarks: a real redis-server behind an in-process gateway
// and client, the whole path an application's connection takes (client
// listener, serveLocal, the transport, serveStream with its checks, audit
// log and metrics, the upstream dial and both relays).
//
//	go test -run '^$' -bench Gateway -benchmem -count 6 ./test/ > new.txt
//	benchstat old.txt new.txt
//
// Logs go to a text handler on io.Discard at info level: formatted, as in
// production, but not kept. make bench (bench/cmd/cachetun-bench) measures
// the same paths with separate processes against ssh -L and friends.

import (
	"bufio"
	"cmp"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// benchTunnel starts redis, a gateway and a connect on transport and
// returns the local address of the redis node.
func benchTunnel(b *testing.B, transport string) string {
	b.Helper()
	return benchTunnelGrace(b, transport, server.DefaultConfig().Limits.ResumeGrace)
}

// benchTunnelGrace is benchTunnel with the gateway's limits.resume_grace
// (0: streams are not resumable).
func benchTunnelGrace(b *testing.B, transport string, grace time.Duration) string {
	b.Helper()
	r := testenv.StartRedis(b)
	k := newKey(b, "bench@laptop")
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))

	dir := b.TempDir()
	ak := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(ak, []byte(k.Line+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	hostKey := filepath.Join(dir, "host_ed25519")
	if _, err := auth.GenerateKey(hostKey, "bench-host"); err != nil {
		b.Fatal(err)
	}
	cfg := server.DefaultConfig()
	cfg.HostKey, cfg.AuthorizedKeys = hostKey, ak
	cfg.Targets = redisTarget(r)
	cfg.Limits.MaxStreamsPerSession = 4096
	cfg.Limits.ResumeGrace = grace
	cfg.Listen = server.Listen{}
	addr := freeTCPUDPPort(b)
	switch transport {
	case "quic":
		cfg.Listen.QUIC = addr
	case "tls":
		cfg.Listen.TLS = addr
	case "ssh":
		cfg.Listen.SSH = addr
	}
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	srv, err := server.New(cfg, logger)
	if err != nil {
		b.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Run(sctx) }()
	select {
	case <-srv.Ready():
	case err := <-srvErr:
		scancel()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		scancel() // drains: limits.drain_timeout bounds it
		<-srvErr
	})
	a := srv.Addrs()
	gw := cmp.Or(a.QUIC, a.TLS, a.SSH).String()
	kh := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(kh, []byte(knownHostsLine(gw, srv.HostPublicKey())), 0o600); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	zero := 0
	cl, err := client.New(client.Options{
		Profile: "cache", Servers: []string{gw}, Target: "cache", Transport: transport,
		Identity: k.Path, LocalPort: &zero, KnownHosts: kh, Logger: logger,
	})
	if err != nil {
		b.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- cl.Run(ctx) }()
	select {
	case <-cl.Ready():
	case err := <-runErr:
		b.Fatalf("connect over %s: %v", transport, err)
	case <-time.After(20 * time.Second):
		b.Fatal("client not ready within 20s")
	}
	b.Cleanup(func() {
		cancel()
		<-runErr
	})
	local := cl.LocalAddrs()[r.Addr]
	if local == "" {
		b.Fatalf("no local port for %s", r.Addr)
	}
	c := dialRedis(b, local)
	defer c.Close()
	c.do(b, "*3\r\n$3\r\nSET\r\n$5\r\nbench\r\n$16\r\n0123456789abcdef\r\n", "+OK\r\n")
	return local
}

// redisConn is a raw RESP connection.
type redisConn struct {
	net.Conn
	r   *bufio.Reader
	buf []byte
}

func dialRedis(tb testing.TB, addr string) *redisConn {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	return &redisConn{Conn: c, r: bufio.NewReader(c), buf: make([]byte, 64)}
}

// do sends req and reads exactly len(want) bytes, which must be want.
func (c *redisConn) do(tb testing.TB, req, want string) {
	if _, err := io.WriteString(c.Conn, req); err != nil {
		tb.Fatal(err)
	}
	got := c.buf[:len(want)]
	if _, err := io.ReadFull(c.r, got); err != nil {
		tb.Fatal(err)
	}
	if string(got) != want {
		tb.Fatalf("got %q, want %q", got, want)
	}
}

const (
	benchGET   = "*2\r\n$3\r\nGET\r\n$5\r\nbench\r\n"
	benchReply = "$16\r\n0123456789abcdef\r\n"
)

// BenchmarkGateway_GET: one connection, one GET at a time (-c 1).
func BenchmarkGateway_GET(b *testing.B) {
	for _, tr := range transports {
		b.Run(tr, func(b *testing.B) {
			c := dialRedis(b, benchTunnel(b, tr))
			defer c.Close()
			c.do(b, benchGET, benchReply)
			b.ReportAllocs()
			for b.Loop() {
				c.do(b, benchGET, benchReply)
			}
		})
	}
}

// BenchmarkGateway_GETParallel: 32 connections doing GETs at once
// (-c 50 -P 1).
func BenchmarkGateway_GETParallel(b *testing.B) {
	for _, tr := range transports {
		b.Run(tr, func(b *testing.B) {
			local := benchTunnel(b, tr)
			b.SetParallelism(16)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				c := dialRedis(b, local)
				defer c.Close()
				for pb.Next() {
					c.do(b, benchGET, benchReply)
				}
			})
		})
	}
}

// BenchmarkGateway_Churn: a new connection per GET (-k 0), 25 per core:
// a stream open, an upstream dial and an audit log line per op; "resume"
// with resumable streams (the default), "plain" with resume_grace 0.
// cpu-ns/op is the CPU of gateway and connect together per connection.
// allocs/op, which hardly varies from run to run, shows what a resumable
// stream costs over a plain one where the CPU figures are too noisy to.
func BenchmarkGateway_Churn(b *testing.B) {
	for _, tr := range transports {
		for _, arm := range []struct {
			name  string
			grace time.Duration
		}{{"resume", server.DefaultConfig().Limits.ResumeGrace}, {"plain", 0}} {
			b.Run(tr+"/"+arm.name, func(b *testing.B) {
				local := benchTunnelGrace(b, tr, arm.grace)
				b.ReportAllocs()
				cpu0 := processCPU(b)
				b.SetParallelism(25) // 25 per core: on 2 cores 50 at a time, as redis-benchmark -c 50 -k 0
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						c := dialRedis(b, local)
						c.do(b, benchGET, benchReply)
						c.Close()
					}
				})
				b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// processCPU is the CPU time (user and system) this process has used:
// gateway, connect and the benchmark's own client, not redis. Per op it
// says what a stream costs where ns/op, a serial round trip, says mostly
// how long it waits.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
