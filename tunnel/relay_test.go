package tunnel_test

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/cachetun/cachetun/tunnel"
)

// TestRelay_ServerSpeaksFirst: an upstream that talks before the client
// (a banner) works through both relays although the client never writes:
// the client relay sends the open header alone when the local connection
// has nothing to send, and the gateway's status travels with the banner.
func TestRelay_ServerSpeaksFirst(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		banner := []byte("220 hello from upstream\r\n")
		c := startChain(t, p, func(nc net.Conn) {
			if _, err := nc.Write(banner); err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, nc)
		})
		nc := c.dial(t)
		defer nc.Close()
		_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(banner))
		if _, err := io.ReadFull(nc, got); err != nil || !bytes.Equal(got, banner) {
			t.Fatalf("read %q, %v; want the banner %q", got, err, banner)
		}
	})
}

// TestRelay_EmptyConnection: a local connection closed without a byte
// still opens and closes the stream cleanly, and the upstream sees EOF.
func TestRelay_EmptyConnection(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		eof := make(chan error, 1)
		c := startChain(t, p, func(nc net.Conn) {
			_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.Copy(io.Discard, nc)
			eof <- err
		})
		nc := c.dial(t)
		nc.Close()
		if err := within(t, eof, 10*time.Second, "upstream saw the connection end"); err != nil {
			t.Fatalf("upstream read ended with %v, want EOF", err)
		}
	})
}

// TestRelay_ManySmallWrites: requests of every size from 1 byte to 20 KiB
// (around the header coalescing limit and the TLS record size) arrive
// intact and in order.
func TestRelay_ManySmallWrites(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		c := startChain(t, p, echo)
		nc := c.dial(t)
		defer nc.Close()
		_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
		for _, n := range []int{1, 2, 11, 12, 13, 100, 1500, 16<<10 - 12, 16 << 10, 16<<10 + 1, 20 << 10} {
			msg := bytes.Repeat([]byte{byte(n)}, n)
			if _, err := nc.Write(msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, n)
			if _, err := io.ReadFull(nc, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("%d bytes: echo differs (err %v)", n, err)
			}
		}
	})
}

// TestRelay_IdleHoldsNoBuffers: relays waiting for data hold no copy
// buffer. 64 proxied connections each relay one request and its reply and
// then sit idle; with the heap measured after two collections (which
// empty the buffer pool), they may grow it by less than one 64 KiB relay
// buffer per connection, 4 MiB. Relays that held their buffers while
// waiting would hold four per connection (two on each end), 16 MiB. SSH
// is not held to it: an SSH channel cannot wait without reading
// (Stream.WaitReadable returns ErrNoWait), so its relays hold a buffer.
func TestRelay_IdleHoldsNoBuffers(t *testing.T) {
	const (
		conns = 64
		bound = conns * 64 << 10
	)
	for _, tr := range []string{"quic", "tls"} {
		t.Run(tr, func(t *testing.T) {
			tunnel.VerifyNoLeaks(t)
			// The upstream echoes with a small buffer of its own, so
			// that what the heap holds is the relays'.
			c := startChain(t, newPair(t, tr), func(nc net.Conn) {
				buf := make([]byte, 16)
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
			})
			ping := func(nc net.Conn) {
				t.Helper()
				_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := nc.Write([]byte("ping")); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, 4)
				if _, err := io.ReadFull(nc, got); err != nil || string(got) != "ping" {
					t.Fatalf("echo: %q, %v", got, err)
				}
			}
			warm := c.dial(t) // the session's first stream, out of the count
			defer warm.Close()
			ping(warm)
			growth := idleGrowth(t, c, conns, ping)
			t.Logf("%s: %d idle relayed connections grew the heap by %d KiB (bound %d KiB)", tr, conns, growth>>10, bound>>10)
			if growth >= bound {
				t.Fatalf("%d idle connections grew the heap by %d KiB, bound %d KiB: idle relays hold copy buffers", conns, growth>>10, bound>>10)
			}
		})
	}
}

// idleGrowth dials n connections through c, runs use on each and returns
// how much they grew the heap while all are still open (closed when the
// test ends).
func idleGrowth(t *testing.T, c *chain, n int, use func(net.Conn)) int64 {
	t.Helper()
	before := heapInuse()
	for range n {
		nc := c.dial(t)
		t.Cleanup(func() { nc.Close() })
		use(nc)
	}
	return int64(heapInuse()) - int64(before)
}

// heapInuse returns the heap in use after two collections, which empty
// sync.Pools.
func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestRelay_SSHIdleAfterBulk: an SSH relay reads with a 256 KiB buffer
// while a transfer keeps it full, and goes back to a 64 KiB relay buffer
// before it waits. 32 connections each receive 1 MiB + 3 bytes and then
// sit idle; with the heap measured after two collections (which empty the
// pools) they may grow it by less than 288 KiB each, 9 MiB. Measured:
// 6.0-6.2 MiB, 192-197 KiB each (a relay buffer on each end, held while
// the channel is read, and the channel's state), as with 64 KiB reads
// throughout; relays that kept the large buffer while idle grew it by
// 12.3 MiB.
func TestRelay_SSHIdleAfterBulk(t *testing.T) {
	const (
		conns = 32
		size  = 1<<20 + 3
		bound = conns * 288 << 10
	)
	tunnel.VerifyNoLeaks(t)
	payload := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
	c := startChain(t, newPair(t, "ssh"), func(nc net.Conn) {
		if _, err := nc.Write(payload); err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, nc)
	})
	warm := c.dial(t) // the session's first stream, out of the count
	defer warm.Close()
	read := func(nc net.Conn) {
		t.Helper()
		_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
		got := make([]byte, size)
		if _, err := io.ReadFull(nc, got); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("transfer: %d bytes differ or %v", size, err)
		}
	}
	read(warm)
	growth := idleGrowth(t, c, conns, read)
	t.Logf("%d idle SSH relays after a 1 MiB transfer each grew the heap by %d KiB (bound %d KiB)", conns, growth>>10, bound>>10)
	if growth >= bound {
		t.Fatalf("%d idle SSH relays grew the heap by %d KiB, bound %d KiB: idle relays keep their large read buffers", conns, growth>>10, bound>>10)
	}
}
