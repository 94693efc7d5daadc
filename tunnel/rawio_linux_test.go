package tunnel

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// fastConn must behave like the *net.TCPConn it wraps: bytes both ways
// (including writes far larger than the socket buffer), io.EOF after a
// half-close, deadlines as timeouts, and net.ErrClosed after Close.
func TestFastConn(t *testing.T) {
	VerifyNoLeaks(t)
	raw, peer := TCPPair(t)
	defer peer.Close()
	c := newFastConn(raw)
	if _, ok := c.(*fastConn); !ok {
		t.Fatalf("newFastConn(%T) = %T, want *fastConn", raw, c)
	}
	defer c.Close()

	// A deadline with nothing to read is a timeout, as with net.Conn.
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := c.Read(make([]byte, 16))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past deadline: %v, want a timeout", err)
	}
	_ = c.SetReadDeadline(time.Time{})

	// 8 MiB each way at once: writes must survive EAGAIN and partial writes.
	want := bytes.Repeat([]byte("cachetun-fastconn"), 8<<20/17)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	echo := make(chan error, 1)
	go func() {
		_, err := peer.Write(want)
		echo <- err
	}()
	if n, err := c.Write(want); err != nil || n != len(want) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
	}
	back := make([]byte, len(want))
	if _, err := io.ReadFull(c, back); err != nil {
		t.Fatalf("ReadFull: %v", err)
	}
	if err := <-echo; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, want) {
		t.Fatal("bytes read differ from bytes written")
	}
	// Half-close: the peer sees EOF after all bytes; then peer's FIN is our EOF.
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("peer got %d bytes, want %d", len(b), len(want))
	}
	_ = peer.CloseWrite()
	if n, err := c.Read(make([]byte, 16)); n != 0 || err != io.EOF {
		t.Fatalf("Read after peer's FIN = %d, %v; want 0, io.EOF", n, err)
	}
	_ = c.Close()
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
	}
}
