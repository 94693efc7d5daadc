package tunnel

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/net/ipv4"
)

// Workaround for quic-go/quic-go#2809 (open; verified in v0.65.0): the
// send loop (send_queue.go, sendQueue.Run) ends the connection on any
// error of sendmsg but EMSGSIZE. A laptop's network hands a sender many
// errors that only mean "this packet did not leave": ENETUNREACH while
// Wi-Fi roams, EADDRNOTAVAIL just after an address was removed, ENOBUFS,
// EPERM from a local firewall. lossyUDPConn reports those as sent; the
// packet is lost, and quic-go's loss recovery sends its data again, as it
// would for a packet dropped on the wire. Every other error is passed on
// untouched, so quic-go's own handling keeps working: EMSGSIZE (path MTU
// discovery, isSendMsgSizeErr), EIO from a GSO batch (send_conn.go falls
// back to one packet per sendmsg, isGSOError), EPERM on a socket's first
// packet (golang/go#63322, which the retry below covers as well).
// A client's conn takes errors as loss only once its connection is
// established: a dial with no network still fails at once.
//
// The wrapper must keep every interface quic-go looks for (sys_conn.go
// wrapConn, sys_conn_oob.go newConn), or quic-go silently falls back to a
// plain PacketConn without GSO, ECN, DF and recvmmsg: OOBCapablePacketConn
// (ReadMsgUDP, WriteMsgUDP, SyscallConn, SetReadBuffer), SetWriteBuffer,
// and ReadBatch (here straight from the socket, as quic-go itself would).
type lossyUDPConn struct {
	*net.UDPConn
	batch *ipv4.PacketConn
	errs  *sendErrors
	lossy atomic.Bool // take transient errors as loss; false passes them on
}

var _ quic.OOBCapablePacketConn = (*lossyUDPConn)(nil)

// The batch reader quic-go uses when the conn offers one (sys_conn_oob.go).
var _ interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
} = (*lossyUDPConn)(nil)

// newLossyUDPConn wraps c; it takes transient errors as loss once
// c.lossy is set.
func newLossyUDPConn(c *net.UDPConn, errs *sendErrors) *lossyUDPConn {
	return &lossyUDPConn{UDPConn: c, batch: ipv4.NewPacketConn(c), errs: errs}
}

// ReadBatch reads with recvmmsg (on Linux) from the socket itself.
func (c *lossyUDPConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	return c.batch.ReadBatch(ms, flags)
}

// WriteMsgUDP is what quic-go sends every packet with (GSO batches and
// ECN marks travel in oob).
func (c *lossyUDPConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	n, oobn, err := c.UDPConn.WriteMsgUDP(b, oob, addr)
	if err == nil {
		return n, oobn, nil
	}
	name, ok := transientSendErrno(err)
	if !ok || !c.lossy.Load() {
		return n, oobn, err
	}
	if name == "EPERM" {
		// Linux sometimes refuses a new socket's first sendmsg
		// (golang/go#63322); quic-go retries that once, so do we.
		if n, oobn, err = c.UDPConn.WriteMsgUDP(b, oob, addr); err == nil {
			return n, oobn, nil
		}
		if name, ok = transientSendErrno(err); !ok {
			return n, oobn, err
		}
	}
	c.errs.lost(name, addr)
	return len(b), len(oob), nil
}

// WriteTo is what quic-go would use without OOB support; it is never
// called here, but takes the same errors as loss should that change.
func (c *lossyUDPConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	n, err := c.UDPConn.WriteTo(b, addr)
	if err == nil {
		return n, nil
	}
	name, ok := transientSendErrno(err)
	if !ok || !c.lossy.Load() {
		return n, err
	}
	c.errs.lost(name, addr)
	return len(b), nil
}

// transientSendErrnos are the sendmsg errors taken as packet loss.
var transientSendErrnos = []struct {
	errno syscall.Errno
	name  string
}{
	{syscall.ENETUNREACH, "ENETUNREACH"},
	{syscall.EHOSTUNREACH, "EHOSTUNREACH"},
	{syscall.EADDRNOTAVAIL, "EADDRNOTAVAIL"},
	{syscall.ENETDOWN, "ENETDOWN"},
	{syscall.ENOBUFS, "ENOBUFS"},
	{syscall.EPERM, "EPERM"},
}

// QUICSendErrnos names the send errors that a QUIC connection takes as
// packet loss (the errno label of QUICConfig.OnSendError).
func QUICSendErrnos() []string {
	names := make([]string, len(transientSendErrnos))
	for i, e := range transientSendErrnos {
		names[i] = e.name
	}
	return names
}

func transientSendErrno(err error) (string, bool) {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return "", false
	}
	for _, e := range transientSendErrnos {
		if errno == e.errno {
			return e.name, true
		}
	}
	return "", false
}

// sendErrorLogInterval is the least time between two log lines of one errno.
const sendErrorLogInterval = 10 * time.Second

// sendErrors counts the packets taken as lost and logs them, at most once
// per sendErrorLogInterval per errno.
type sendErrors struct {
	log     *slog.Logger
	onError func(errno string)
	now     func() time.Time

	mu     sync.Mutex
	logged map[string]time.Time // errno → when it was last logged
	since  map[string]int       // errno → packets lost since then, unlogged
}

func newSendErrors(log *slog.Logger, onError func(string)) *sendErrors {
	return &sendErrors{
		log: log, onError: onError, now: time.Now,
		logged: make(map[string]time.Time), since: make(map[string]int),
	}
}

func (s *sendErrors) lost(errno string, to net.Addr) {
	if s.onError != nil {
		s.onError(errno)
	}
	if s.log == nil {
		return
	}
	now := s.now()
	s.mu.Lock()
	s.since[errno]++
	last, seen := s.logged[errno]
	if seen && now.Sub(last) < sendErrorLogInterval {
		s.mu.Unlock()
		return
	}
	n := s.since[errno]
	s.since[errno] = 0
	s.logged[errno] = now
	s.mu.Unlock()
	s.log.Warn("quic: a packet could not be sent; it is taken as lost and sent again, the connection stays open",
		"errno", errno, "to", to.String(), "packets", n, "log_interval", sendErrorLogInterval)
}
