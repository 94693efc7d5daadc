package tunnel

import (
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TCPPair returns two ends of a loopback TCP connection (for the tests
// of both this package and tunnel_test).
func TCPPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		done <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-done
	if b == nil {
		t.Fatal("accept failed")
	}
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// VerifyNoLeaks takes a snapshot of the goroutines running now and, when
// t ends (after every Cleanup registered later, so after the sessions of
// the test are closed), fails t if any goroutine started since is still
// running. Call it before the test starts anything. goleak.Find retries
// for about 2 s; quic-go and yamux end some goroutines only after Close
// returned, so it is tried for up to 10 s.
func VerifyNoLeaks(t testing.TB) {
	t.Helper()
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := goleak.Find(before, IgnoreQUICListen)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("goroutines leaked by %s:\n%v", t.Name(), err)
				return
			}
		}
	})
}

// IgnoreQUICListen: quic-go's Transport.listen goroutine ends only when
// its UDP socket's read returns, after Transport.Close.
var IgnoreQUICListen = goleak.IgnoreTopFunction("github.com/quic-go/quic-go.(*Transport).listen")
