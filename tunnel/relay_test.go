package tunnel_test

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
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
