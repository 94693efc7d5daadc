package tunnel_test

// Benchmarks of the hot path: the relay on both ends of a session, the
// stream-open path and (in proto_bench_test.go) the protocol codec.
//
//	go test -run '^$' -bench . -benchmem -count 6 ./tunnel/ > new.txt
//	benchstat old.txt new.txt
//
// Allocations are counted process-wide, so allocs/op includes the relays,
// the transports and the upstream of the benchmark, not only the loop.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cachetun/cachetun/tunnel"
)

// chain is the whole data path of a proxied connection on loopback:
//
//	bench ─TCP─► client Relay ═stream═► server Relay ─TCP─► upstream
//
// Local is the address the bench dials, as an application would dial the
// port of `cachetun connect`.
type chain struct {
	Local string
	wg    sync.WaitGroup
}

func startChain(tb testing.TB, p pair, upstream func(net.Conn)) *chain {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &chain{}
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	local, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	c.Local = local.Addr().String()
	tb.Cleanup(func() {
		cancel()
		up.Close()
		local.Close()
		p.client.Close()
		p.server.Close()
		c.wg.Wait()
	})
	c.goLoop(func() { // upstream, the "cache"
		for {
			nc, err := up.Accept()
			if err != nil {
				return
			}
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				defer nc.Close()
				upstream(nc)
			}()
		}
	})
	c.goLoop(func() { // gateway side
		for {
			in, err := p.server.AcceptStream(ctx)
			if err != nil {
				return
			}
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				if _, err := in.Request(time.Now().Add(5 * time.Second)); err != nil {
					in.Reject(tunnel.StatusBadRequest, "bad header")
					return
				}
				uc, err := net.Dial("tcp", up.Addr().String())
				if err != nil {
					in.Reject(tunnel.StatusUnreachable, err.Error())
					return
				}
				_ = uc.(*net.TCPConn).SetNoDelay(true)
				st, err := in.Accept()
				if err != nil {
					uc.Close()
					return
				}
				tunnel.Relay(ctx, uc, st, nil, tunnel.IdleTimeout(time.Hour))
			}()
		}
	})
	c.goLoop(func() { // client side, as serveLocal
		for {
			nc, err := local.Accept()
			if err != nil {
				return
			}
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				st, err := p.client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "bench", Node: up.Addr().String()})
				if err != nil {
					nc.Close()
					return
				}
				tunnel.Relay(ctx, nc, st, nil)
			}()
		}
	})
	return c
}

func (c *chain) goLoop(f func()) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
}

func (c *chain) dial(tb testing.TB) net.Conn {
	tb.Helper()
	nc, err := net.Dial("tcp", c.Local)
	if err != nil {
		tb.Fatal(err)
	}
	return nc
}

// echo answers every read with the same bytes, as a cache answers a
// request.
func echo(nc net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := nc.Read(buf)
		if n > 0 {
			if _, werr := nc.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// sysIO returns this process's read- and write-class syscall counts
// (/proc/self/io), which unlike timings are not disturbed by a busy
// machine.
func sysIO() (r, w int64) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1, -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "syscr":
			r = n
		case "syscw":
			w = n
		}
	}
	return r, w
}

// cpuTime returns the user+system CPU time of this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// syscalls reports read and write syscalls and CPU time per op of the
// whole process (bench loop, both relays, transports and upstream) as
// custom metrics; both hardly depend on other load on the machine.
type syscalls struct {
	r, w int64
	cpu  time.Duration
}

func startSyscalls() syscalls {
	r, w := sysIO()
	return syscalls{r, w, cpuTime()}
}

func (s syscalls) report(b *testing.B, ops int) {
	r, w := sysIO()
	cpu := cpuTime()
	if ops == 0 {
		return
	}
	if s.r >= 0 && r >= 0 {
		b.ReportMetric(float64(r-s.r)/float64(ops), "reads/op")
		b.ReportMetric(float64(w-s.w)/float64(ops), "writes/op")
	}
	if s.cpu >= 0 && cpu >= 0 {
		b.ReportMetric(float64(cpu-s.cpu)/float64(ops), "cpu-ns/op")
	}
}

// BenchmarkRelay_RoundTrip: one connection, one 64-byte request and its
// 64-byte reply at a time through both relays (-c 1 latency).
func BenchmarkRelay_RoundTrip(b *testing.B) {
	for _, tr := range allTransports {
		b.Run(tr, func(b *testing.B) {
			c := startChain(b, newPair(b, tr), echo)
			nc := c.dial(b)
			defer nc.Close()
			msg := bytes.Repeat([]byte("x"), 64)
			reply := make([]byte, len(msg))
			roundTrip := func() {
				if _, err := nc.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(nc, reply); err != nil {
					b.Fatal(err)
				}
			}
			roundTrip() // open the stream outside the timing
			b.SetBytes(int64(2 * len(msg)))
			b.ReportAllocs()
			sc, ops := startSyscalls(), 0
			for b.Loop() {
				roundTrip()
				ops++
			}
			sc.report(b, ops)
		})
	}
}

// BenchmarkRelay_Parallel: 32 connections doing round trips at once
// (-c 50 -P 1 through one session).
func BenchmarkRelay_Parallel(b *testing.B) {
	for _, tr := range allTransports {
		b.Run(tr, func(b *testing.B) {
			c := startChain(b, newPair(b, tr), echo)
			conns := make(chan net.Conn, 32)
			for range 32 {
				conns <- c.dial(b)
			}
			b.SetParallelism(16) // 2 CPUs × 16 = 32 goroutines
			b.SetBytes(2 * 64)
			b.ReportAllocs()
			b.ResetTimer()
			sc := startSyscalls()
			defer func() { sc.report(b, b.N) }()
			b.RunParallel(func(pb *testing.PB) {
				nc := <-conns
				defer nc.Close()
				msg := bytes.Repeat([]byte("y"), 64)
				reply := make([]byte, len(msg))
				for pb.Next() {
					if _, err := nc.Write(msg); err != nil {
						b.Error(err)
						return
					}
					if _, err := io.ReadFull(nc, reply); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkRelay_Bulk moves 1 MiB per op through both relays, up (to the
// cache) or down (from it).
func BenchmarkRelay_Bulk(b *testing.B) {
	const chunk = 1 << 20
	for _, tr := range allTransports {
		b.Run(tr+"/up", func(b *testing.B) {
			got := make(chan int64, 1)
			c := startChain(b, newPair(b, tr), func(nc net.Conn) {
				n, _ := io.Copy(io.Discard, nc)
				got <- n
			})
			nc := c.dial(b)
			buf := bytes.Repeat([]byte("u"), chunk)
			b.SetBytes(chunk)
			b.ReportAllocs()
			var sent int64
			sc := startSyscalls()
			for b.Loop() {
				if _, err := nc.Write(buf); err != nil {
					b.Fatal(err)
				}
				sent += chunk
			}
			_ = nc.(*net.TCPConn).CloseWrite()
			n := <-got // not timed: b.Loop stopped the timer
			sc.report(b, int(sent/chunk))
			nc.Close()
			if n != sent {
				b.Fatalf("upstream got %d bytes, want %d", n, sent)
			}
		})
		b.Run(tr+"/down", func(b *testing.B) {
			src := bytes.Repeat([]byte("d"), chunk)
			c := startChain(b, newPair(b, tr), func(nc net.Conn) {
				for {
					if _, err := nc.Write(src); err != nil {
						return
					}
				}
			})
			nc := c.dial(b)
			defer nc.Close()
			if _, err := nc.Write([]byte("go")); err != nil { // opens the stream on every transport
				b.Fatal(err)
			}
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			b.ReportAllocs()
			sc, ops := startSyscalls(), 0
			for b.Loop() {
				if _, err := io.ReadFull(nc, buf); err != nil {
					b.Fatal(err)
				}
				ops++
			}
			sc.report(b, ops)
		})
	}
}

// BenchmarkRelay_Churn: a new TCP connection per request, so every op
// opens a stream and an upstream connection (-k 0).
func BenchmarkRelay_Churn(b *testing.B) {
	for _, tr := range allTransports {
		b.Run(tr, func(b *testing.B) {
			c := startChain(b, newPair(b, tr), echo)
			msg := []byte("*1\r\n$4\r\nPING\r\n")
			reply := make([]byte, len(msg))
			b.ReportAllocs()
			sc, ops := startSyscalls(), 0
			for b.Loop() {
				nc := c.dial(b)
				if _, err := nc.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(nc, reply); err != nil {
					b.Fatal(err)
				}
				nc.Close()
				ops++
			}
			sc.report(b, ops)
		})
	}
}

// serveStreams connects a pair of sessions of transport tr whose server
// end accepts every stream with a good header and hands it to serve, each
// in a goroutine of its own. When the benchmark ends, ctx is cancelled,
// both sessions are closed and every goroutine is waited for.
func serveStreams(b *testing.B, tr string, serve func(req tunnel.OpenRequest, st tunnel.Stream)) (client tunnel.Session, ctx context.Context) {
	b.Helper()
	p := newPair(b, tr)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	b.Cleanup(func() {
		cancel()
		p.client.Close()
		p.server.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := p.server.AcceptStream(ctx)
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, err := in.Request(time.Now().Add(5 * time.Second))
				if err != nil {
					in.Reject(tunnel.StatusBadRequest, "bad header")
					return
				}
				st, err := in.Accept()
				if err != nil {
					return
				}
				serve(req, st)
			}()
		}
	}()
	return p.client, ctx
}

// BenchmarkOpenStream: the stream-open path alone, without TCP on either
// side: open, send a request behind the header, read the status and the
// reply, close.
func BenchmarkOpenStream(b *testing.B) {
	for _, tr := range allTransports {
		b.Run(tr, func(b *testing.B) {
			client, ctx := serveStreams(b, tr, func(_ tunnel.OpenRequest, st tunnel.Stream) {
				defer st.Close()
				buf := make([]byte, 64)
				n, err := st.Read(buf)
				if err != nil && !errors.Is(err, io.EOF) {
					return
				}
				_, _ = st.Write(buf[:n])
				_ = st.CloseWrite()
			})
			msg := []byte("*1\r\n$4\r\nPING\r\n")
			reply := make([]byte, len(msg))
			b.ReportAllocs()
			for b.Loop() {
				st, err := client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "bench", Node: "10.0.0.1:6379"})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := st.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(st, reply); err != nil {
					b.Fatal(err)
				}
				st.Close()
			}
		})
	}
}
