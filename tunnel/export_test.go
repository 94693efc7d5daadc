package tunnel

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlogwriter"
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
			err := goleak.Find(before, IgnoreQUICListen, IgnoreIdleWorkers)
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

// SetQUICTracer sets the qlog tracer of the connections made with c.
func SetQUICTracer(c *QUICConfig, f func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace) {
	c.tracer = f
}

// SetQUICPacketConn makes the transports of c hand quic-go wrap(udp)
// instead of the wrapper that takes transient send errors as loss.
func SetQUICPacketConn(c *QUICConfig, wrap func(*net.UDPConn) net.PacketConn) {
	c.packetConnFor = wrap
}

// QUICState returns quic-go's state of the connection of a QUIC session.
func QUICState(s Session) quic.ConnectionState { return s.(*quicSession).c.ConnectionState() }

// NewLossyUDPConn wraps c as the QUIC transports do; onError and log
// receive what it takes as loss; now is its clock (nil: time.Now).
func NewLossyUDPConn(c *net.UDPConn, log *slog.Logger, onError func(string), now func() time.Time) quic.OOBCapablePacketConn {
	errs := newSendErrors(log, onError)
	if now != nil {
		errs.now = now
	}
	l := newLossyUDPConn(c, errs)
	l.lossy.Store(true)
	return l
}

// SendErrorLogInterval is the least time between two log lines of one
// errno.
const SendErrorLogInterval = sendErrorLogInterval

// QUICCloseCause returns why the connection of a QUIC session ended (nil
// while it is open).
func QUICCloseCause(s Session) error { return context.Cause(s.(*quicSession).c.Context()) }

// TransientSendErrno reports whether err is a send error taken as loss.
var TransientSendErrno = transientSendErrno

// RefreshQUICPath makes a QUIC client session switch to a new path, as it
// does when its congestion window stalls, with no least gap between two
// switches; it returns the switches done so far.
func RefreshQUICPath(s Session) int64 {
	p := s.(*quicSession).paths
	p.mu.Lock()
	p.minGap = 0
	p.mu.Unlock()
	p.refresh()
	return p.count.Load()
}

// QUICPathRefreshes returns the path switches of a QUIC client session.
func QUICPathRefreshes(s Session) int64 { return s.(*quicSession).paths.count.Load() }

// AskQUICRefresh makes a QUIC server session ask its client to refresh.
func AskQUICRefresh(s Session) { s.(*quicSession).asker.request() }

// StallWatch exposes the stall detector to tests.
type StallWatch = stallWatch

// NewStallWatch returns a detector that sees writing stream writes.
func NewStallWatch(writing *atomic.Int32) *StallWatch { return &stallWatch{writing: writing} }

// NewClientStallWatch returns a client's detector: switches counts its
// path switches.
func NewClientStallWatch(writing *atomic.Int32, switches *atomic.Int64) *StallWatch {
	return &stallWatch{writing: writing, switches: switches}
}

// Sample feeds one reading to w.
func (w *StallWatch) Sample(now time.Time, st quic.ConnectionStats) bool { return w.sample(now, st) }

// RefreshEvery is the least time between two refreshes a watch asks for.
const RefreshEvery = refreshEvery

// SetOwnedWrites turns the relay's hand-over of its buffers to a
// Resumable (writeOwned) on or off, and returns the undo.
func SetOwnedWrites(on bool) func() {
	old := ownWrites
	ownWrites = on
	return func() { ownWrites = old }
}

// IgnoreIdleWorkers: a goroutine of Go that waits for work (at most
// maxIdleWorkers, each for at most workerIdle) is not a leak.
var IgnoreIdleWorkers = goleak.IgnoreTopFunction("github.com/cachetun/cachetun/tunnel.worker")

// GoWorkers returns how many goroutines Go has started, and how many
// wait for work now.
func GoWorkers() (started int64, idle int32) { return workers.Load(), idleWorkers.Load() }

// MaxIdleWorkers is maxIdleWorkers.
const MaxIdleWorkers = maxIdleWorkers

// BudgetQuantum is budgetQuantum.
const BudgetQuantum = budgetQuantum

// Acquire is acquire, for the budget's own tests.
func (b *ResumeBudget) Acquire(n int, stop func() bool) bool { return b.acquire(n, stop) }

// Release is release.
func (b *ResumeBudget) Release(n int) { b.release(n) }

// Wake is wake.
func (b *ResumeBudget) Wake() { b.wake() }
