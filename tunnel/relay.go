package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The relay joins a stream to a TCP (or any net) connection. Both ends of
// a proxied connection run it: the client between the application's local
// connection and its stream, the gateway between the stream and the
// upstream connection.
//
// Each direction is one copy loop (copyLoop) over a source: the
// connection's raw descriptor (connSource), a stream (streamSource) or,
// where neither can wait for data without a buffer, a plain reader
// (holdingSource). A source takes a 64 KiB buffer from the pool only when
// data is there and gives it back before it waits, so an idle relay holds
// no copy buffer. What is special about a stream (its open header, how it
// waits) is the stream's, through Stream.FlushOpen and
// Stream.WaitReadable.

// relayBufSize is the copy buffer of each relay direction.
const relayBufSize = 64 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// holdBufSize is the buffer a holding streamSource (SSH) reads into
// while the stream has more queued than a relay buffer holds. An SSH
// channel answers a read with a window adjustment to the peer whenever
// more than half its window is in flight (x/crypto/ssh
// channel.adjustWindow), as in a bulk transfer, and each read here is one
// write to the connection: reads of up to 256 KiB send a quarter of the
// adjustments and writes that 64 KiB reads do.
const holdBufSize = 256 << 10

var holdBufs = sync.Pool{New: func() any { b := make([]byte, holdBufSize); return &b }}

// RelayResult tells how a relay ended.
type RelayResult struct {
	ConnToStream int64 // bytes read from conn and written to the stream
	StreamToConn int64 // bytes read from the stream and written to conn
	// Err is the first error in either direction; nil for a clean end of
	// both directions.
	Err error
	// Idle is true when the relay was cut by the idle timeout.
	Idle bool
}

// Rewriter rewrites a cache protocol as it passes through a relay.
// CopyRequests copies conn to the stream, CopyReplies the stream to conn;
// each copies until src ends (nil for a clean io.EOF) or either side
// fails, returns the bytes written to dst, and must return once its src
// fails or ends. A nil Rewriter relays bytes as they are.
type Rewriter interface {
	CopyRequests(dst io.Writer, src io.Reader) (int64, error)
	CopyReplies(dst io.Writer, src io.Reader) (int64, error)
}

// RelayOption is an option of Relay; IdleTimeout is the only one.
type RelayOption interface{ relayOption() }

// IdleTimeout cuts a relay that moved no byte in either direction for
// that long (the result then has Idle set); 0 or less means no idle
// timeout, the default.
type IdleTimeout time.Duration

func (IdleTimeout) relayOption() {}

type closeWriter interface{ CloseWrite() error }

// Relay copies between conn and st until both directions have ended,
// propagating half-close (EOF becomes CloseWrite on the other side) and
// resets (an error on one side aborts the other). rw, if not nil, copies
// both directions instead of the plain copy. ctx cancellation aborts the
// relay. Relay closes both conn and st before it returns.
//
// A client stream's open header goes out with the first bytes of conn,
// or alone (st.FlushOpen) as soon as conn has nothing to send; the stream
// is read only once the header is out (see Stream.WaitReadable).
func Relay(ctx context.Context, conn net.Conn, st Stream, rw Rewriter, opts ...RelayOption) RelayResult {
	var idle time.Duration
	for _, o := range opts {
		if d, ok := o.(IdleTimeout); ok {
			idle = time.Duration(d)
		}
	}
	r := new(relayState) // one allocation for the state both goroutines share
	var (
		res      = &r.res
		last     *atomic.Int64 // nil without an idle timeout: no clock reads per copy
		abortAll = func() {
			st.Abort()
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // send RST, as the peer reset us
			}
			_ = conn.Close()
		}
	)
	fail := func(err error) {
		r.errOnce.Do(func() {
			res.Err = err
			abortAll()
		})
	}
	if idle > 0 {
		last = &r.lastAt
		last.Store(time.Now().UnixNano())
		var t *time.Timer
		check := func() {
			since := time.Since(time.Unix(0, last.Load()))
			if since >= idle {
				r.idleCut.Store(true)
				fail(errIdle)
				return
			}
			t.Reset(idle - since)
		}
		t = time.AfterFunc(idle, check)
		defer t.Stop()
	}
	// upClean and downClean: that direction relayed everything to its end.
	// A ctx cut after both (the client read the end and closed its session
	// at once, as doctor's probes do) cut nothing: the stream is not reset.
	stop := context.AfterFunc(ctx, func() {
		if r.upClean.Load() && r.downClean.Load() {
			return
		}
		fail(context.Cause(ctx))
	})
	defer stop()

	// One direction runs here, the other in one goroutine: two goroutines
	// per relay, counting the caller's.
	downDone := make(chan struct{})
	Go(func() {
		defer close(downDone)
		n, err := copyDown(rw, conn, st, last, &r.down)
		res.StreamToConn = n
		if err != nil {
			fail(err)
			return
		}
		// Before the FIN leaves, as for the other direction: the peer may
		// answer it at once (a cache closes on EOF), its close travel back
		// and the client close its session before this goroutine runs
		// again; that ctx cut must find this direction clean.
		r.downClean.Store(true)
		if cw, ok := conn.(closeWriter); ok {
			if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
				fail(err)
				return
			}
		} else {
			_ = conn.Close()
		}
	})
	n, err := copyUp(rw, st, conn, last, &r.up)
	res.ConnToStream = n
	if err == nil {
		// Before the FIN leaves: the peer may act on it at once.
		r.upClean.Store(true)
		err = st.CloseWrite()
	}
	if err != nil {
		fail(err)
	}
	<-downDone
	// Seal res.Err: a late fail (idle timer, ctx) either finished before
	// this returns or does nothing.
	r.errOnce.Do(func() {})
	res.Idle = r.idleCut.Load()
	_ = st.Close()
	_ = conn.Close()
	return *res
}

// relayState is what the two directions of a relay share.
type relayState struct {
	res     RelayResult
	errOnce sync.Once // guards res.Err and the abort
	lastAt  atomic.Int64
	idleCut atomic.Bool
	// upClean and downClean: that direction relayed everything to its
	// end.
	upClean, downClean atomic.Bool
	up                 connSource
	down               streamSource
}

var errIdle = errors.New("idle timeout")

// copyUp copies conn to the stream.
func copyUp(rw Rewriter, st Stream, conn net.Conn, last *atomic.Int64, cs *connSource) (int64, error) {
	if rw != nil {
		// A rewriter reads ahead and may wait for a whole request: the
		// header goes out alone now.
		if err := st.FlushOpen(); err != nil {
			return 0, err
		}
		return rw.CopyRequests(st, activity(newFastConn(conn), last))
	}
	if rc := rawConn(conn); rc != nil {
		cs.init(rc, st)
		return copyLoop(st, cs, last)
	}
	if err := st.FlushOpen(); err != nil {
		return 0, err
	}
	return copyLoop(st, &holdingSource{r: newFastConn(conn)}, last)
}

// copyDown copies the stream to conn.
func copyDown(rw Rewriter, conn net.Conn, st Stream, last *atomic.Int64, ss *streamSource) (int64, error) {
	conn = newFastConn(conn) // writes only; Close and CloseWrite stay the caller's
	if rw != nil {
		return rw.CopyReplies(conn, activity(st, last))
	}
	ss.st = st
	return copyLoop(conn, ss, last)
}

// source is what copyLoop reads from.
type source interface {
	// next returns the next bytes, valid until the following call to
	// next or release, and io.EOF at a clean end. It holds a buffer only
	// while it returns data: before it waits it gives the last one back,
	// unless the source cannot wait without one.
	next() ([]byte, error)
	// release gives back the buffer still held.
	release()
}

// copyLoop is the relay's copy loop: it writes what src yields to dst
// until src ends (nil for io.EOF) or either side fails, noting the time of
// every read in last (when not nil) for the idle timeout.
func copyLoop(dst io.Writer, src source, last *atomic.Int64) (int64, error) {
	defer src.release()
	// A Resumable keeps what it is written until the peer has it: a
	// socket's buffer is handed over to it rather than copied.
	ow, _ := dst.(ownedWriter)
	cs, _ := src.(*connSource)
	if cs == nil || !ownWrites {
		ow = nil
	}
	var total int64
	for {
		b, rerr := src.next()
		if len(b) > 0 {
			if last != nil {
				last.Store(time.Now().UnixNano())
			}
			var w int
			var werr error
			if ow != nil && len(b) >= ownMin {
				if werr = ow.writeOwned(cs.take(), len(b)); werr == nil {
					w = len(b)
				}
			} else {
				w, werr = dst.Write(b)
			}
			total += int64(w)
			if werr == nil && w != len(b) {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return total, werr
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
	}
}

// streamSource reads a stream: Stream.WaitReadable waits for data without
// a buffer, then Read reads it into a pooled one. A stream that cannot
// wait (ErrNoWait) is read with a buffer held throughout: a relay buffer,
// or a holdBufSize one after a read that filled its buffer (more is
// likely queued), until a read that does not (the next read likely
// waits, and a waiting read holds its buffer: an idle stream holds no
// more than before).
type streamSource struct {
	st   Stream
	bp   *[]byte
	hold bool // the stream cannot wait: keep bp
	big  bool // bp is a holdBufs one
	full bool // the last read filled bp
}

func (s *streamSource) next() ([]byte, error) {
	if !s.hold {
		s.release()
		switch err := s.st.WaitReadable(); {
		case err == nil:
		case errors.Is(err, ErrNoWait):
			s.hold = true
		case err == io.EOF:
			// Read the EOF too: quic-go counts a stream as done once its
			// reader has seen it.
			bp := relayBufs.Get().(*[]byte)
			_, _ = s.st.Read(*bp)
			relayBufs.Put(bp)
			return nil, io.EOF
		default:
			return nil, err
		}
	}
	if s.full != s.big {
		s.release()
		if s.full {
			s.bp, s.big = holdBufs.Get().(*[]byte), true
		}
	}
	if s.bp == nil {
		s.bp = relayBufs.Get().(*[]byte)
	}
	n, err := s.st.Read(*s.bp)
	s.full = s.hold && n == len(*s.bp)
	return (*s.bp)[:n], err
}

func (s *streamSource) release() {
	if s.bp == nil {
		return
	}
	if s.big {
		holdBufs.Put(s.bp)
	} else {
		relayBufs.Put(s.bp)
	}
	s.bp, s.big = nil, false
}

// holdingSource reads a reader that cannot wait without a buffer (a
// connection without a descriptor) with a pooled buffer held throughout.
type holdingSource struct {
	r  io.Reader
	bp *[]byte
}

func (h *holdingSource) next() ([]byte, error) {
	if h.bp == nil {
		h.bp = relayBufs.Get().(*[]byte)
	}
	n, err := h.r.Read(*h.bp)
	return (*h.bp)[:n], err
}

func (h *holdingSource) release() {
	if h.bp != nil {
		relayBufs.Put(h.bp)
		h.bp = nil
	}
}

// connSource reads a socket through its raw descriptor, each read(2)
// inside RawConn.Read: the buffer is taken from the pool only when
// read(2) runs and goes back before the goroutine parks, so a relay
// waiting for data holds none. Before it first waits, it calls the
// FlushOpen of the stream it copies to (the open header then goes out
// alone rather than wait for the first bytes); a first read with data
// skips it (the header goes out with the data).
type connSource struct {
	rc    syscall.RawConn
	fn    func(fd uintptr) bool // step, one closure for the whole copy
	flush Stream                // nil once FlushOpen is no longer due
	bp    *[]byte
	n     int
	err   error
}

// init readies c to read rc and copy to dst.
func (c *connSource) init(rc syscall.RawConn, dst Stream) {
	c.rc, c.flush = rc, dst
	c.fn = c.step
}

func (c *connSource) next() ([]byte, error) {
	c.n, c.err = 0, nil
	if err := c.rc.Read(c.fn); err != nil {
		return nil, err
	}
	if c.n > 0 {
		return (*c.bp)[:c.n], c.err
	}
	return nil, c.err
}

// step reads once: false (park until readable) when read(2) says EAGAIN,
// true with data, at the end (io.EOF) or on an error. After data the
// next call reads at once, even after a short read: a FIN (or RST) that
// came with the data raises no edge of its own, so only the next read(2)
// can see it.
func (c *connSource) step(fd uintptr) bool {
	if c.bp == nil {
		c.bp = relayBufs.Get().(*[]byte)
	}
	n, err := readFD(fd, *c.bp)
	for err == syscall.EINTR {
		n, err = readFD(fd, *c.bp)
	}
	switch {
	case err == syscall.EAGAIN:
		c.release()
		if st := c.flush; st != nil {
			// Here rather than after a return from RawConn.Read: that
			// would need one more read(2) before parking.
			c.flush = nil
			if err := st.FlushOpen(); err != nil {
				c.err = err
				return true
			}
		}
		return false
	case err != nil:
		c.err = os.NewSyscallError("read", err)
	case n <= 0:
		c.err = io.EOF
	default:
		c.n = n
		c.flush = nil // the first bytes carry what was pending
	}
	return true
}

// take hands over the buffer that next returned data in: the caller
// owns it, and the next read takes another from the pool.
func (c *connSource) take() *[]byte {
	bp := c.bp
	c.bp = nil
	return bp
}

// ownWrites: copyLoop hands buffers to an ownedWriter (off only in
// benchmarks, to compare).
var ownWrites = true

// ownedWriter is a writer that can keep a relay buffer instead of a copy
// of what it holds (Resumable.writeOwned): it owns bp from the call on.
type ownedWriter interface {
	writeOwned(bp *[]byte, n int) error
}

func (c *connSource) release() {
	if c.bp != nil {
		relayBufs.Put(c.bp)
		c.bp = nil
	}
}

// rawConn returns the raw socket of TCP and Unix connections.
func rawConn(c net.Conn) syscall.RawConn {
	if !rawCopy {
		return nil
	}
	var sc syscall.Conn
	switch c := c.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// activity wraps src to note the time of reads when the idle timeout
// needs it.
func activity(src io.Reader, last *atomic.Int64) io.Reader {
	if last == nil {
		return src
	}
	return &activityReader{r: src, last: last}
}

// activityReader records the time of every read that returned data.
type activityReader struct {
	r    io.Reader
	last *atomic.Int64
}

func (a *activityReader) Read(b []byte) (int, error) {
	n, err := a.r.Read(b)
	if n > 0 {
		a.last.Store(time.Now().UnixNano())
	}
	return n, err
}
