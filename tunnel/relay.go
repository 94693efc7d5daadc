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

// relayBufSize is the copy buffer of each relay direction. A relay holds
// a buffer only while bytes move: waiting for data it holds none (see
// copyConn and copyStream), so idle connections cost no copy buffers.
const relayBufSize = 64 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

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

type closeWriter interface{ CloseWrite() error }

// Relay copies between conn and st until both directions have ended,
// propagating half-close (EOF becomes CloseWrite on the other side) and
// resets (an error on one side aborts the other). idle > 0 cuts a relay that
// moved no byte in either direction for that long; ctx cancellation aborts
// it. Relay closes both conn and st before it returns.
func Relay(ctx context.Context, conn net.Conn, st Stream, idle time.Duration) RelayResult {
	return relay(ctx, conn, st, idle, nil, nil)
}

// CopyFunc copies src to dst until src ends (nil for a clean io.EOF) or
// either side fails, and returns the bytes written to dst.
type CopyFunc func(dst io.Writer, src io.Reader) (int64, error)

// RelayWith is Relay with the copy of each direction done by the given
// functions: up copies conn to st, down copies st to conn (nil means the
// plain copy). Half-close, resets, the idle timeout and ctx work as in
// Relay; a copy function must return once its src fails or ends.
func RelayWith(ctx context.Context, conn net.Conn, st Stream, idle time.Duration, up, down CopyFunc) RelayResult {
	return relay(ctx, conn, st, idle, up, down)
}

func relay(ctx context.Context, conn net.Conn, st Stream, idle time.Duration, up, down CopyFunc) RelayResult {
	var (
		res      RelayResult
		errOnce  sync.Once
		lastAt   atomic.Int64
		last     *atomic.Int64 // nil without an idle timeout: no clock reads per copy
		idleCut  atomic.Bool
		abortAll = func() {
			st.Abort()
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // send RST, as the peer reset us
			}
			_ = conn.Close()
		}
	)
	fail := func(err error) {
		errOnce.Do(func() {
			res.Err = err
			abortAll()
		})
	}
	if idle > 0 {
		last = &lastAt
		last.Store(time.Now().UnixNano())
		var t *time.Timer
		var check func()
		check = func() {
			since := time.Since(time.Unix(0, last.Load()))
			if since >= idle {
				idleCut.Store(true)
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
	var upClean, downClean atomic.Bool
	stop := context.AfterFunc(ctx, func() {
		if upClean.Load() && downClean.Load() {
			return
		}
		fail(context.Cause(ctx))
	})
	defer stop()

	// A client stream whose open header is still unsent gets it with the
	// first bytes of conn (one write instead of two); the stream is read
	// only once the header is out, so that a Read cannot send it alone.
	var gate *openGate
	if op, ok := st.(opener); ok && op.openPending() {
		gate = &openGate{op: op, ch: make(chan struct{})}
	}

	// One direction runs here, the other in one goroutine: two goroutines
	// per relay, counting the caller's.
	downDone := make(chan struct{})
	go func() {
		defer close(downDone)
		if gate != nil {
			<-gate.ch
		}
		n, err := copyDown(down, conn, st, last)
		res.StreamToConn = n
		if err != nil {
			fail(err)
			return
		}
		if cw, ok := conn.(closeWriter); ok {
			if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
				fail(err)
				return
			}
		} else {
			_ = conn.Close()
		}
		downClean.Store(true)
	}()
	n, err := copyUp(up, st, conn, last, gate)
	res.ConnToStream = n
	if err == nil {
		// Before the FIN leaves: the peer may act on it at once.
		upClean.Store(true)
		err = st.CloseWrite()
	}
	if err != nil {
		fail(err)
	}
	<-downDone
	// Seal res.Err: a late fail (idle timer, ctx) either finished before
	// this returns or does nothing.
	errOnce.Do(func() {})
	res.Idle = idleCut.Load()
	_ = st.Close()
	_ = conn.Close()
	return res
}

var errIdle = errors.New("idle timeout")

// opener is implemented by client streams whose open header has not been
// written yet (see clientStream).
type opener interface {
	// openPending reports whether the header is still unsent.
	openPending() bool
	// flushOpen writes the header alone if it is still unsent.
	flushOpen() error
}

// openGate releases the reading direction of a relay once the open header
// is out, with the first payload or alone.
type openGate struct {
	op   opener
	once sync.Once
	ch   chan struct{}
}

func (g *openGate) release() { g.once.Do(func() { close(g.ch) }) }

func (g *openGate) flush() error {
	defer g.release()
	return g.op.flushOpen()
}

// readWaiter is implemented by streams that can wait for data without a
// buffer, so that an idle relay holds no copy buffer.
type readWaiter interface {
	// waitReadable blocks until a Read would not block: data is there, the
	// stream ended (io.EOF) or it failed. It consumes no data; scratch (at
	// least one byte) is the caller's, for streams that must peek. It
	// returns errNoWait at once when the stream cannot wait this way.
	waitReadable(scratch []byte) error
}

// errNoWait: the stream has no way to wait for data without reading.
var errNoWait = errors.New("stream cannot wait for data")

// copyUp copies conn to the stream.
func copyUp(f CopyFunc, st Stream, conn net.Conn, last *atomic.Int64, gate *openGate) (int64, error) {
	if gate != nil {
		defer gate.release()
	}
	if f != nil {
		if gate != nil {
			if err := gate.flush(); err != nil {
				return 0, err
			}
		}
		return f(st, activity(newFastConn(conn), last))
	}
	if rc := rawConn(conn); rc != nil {
		return copyConn(st, rc, last, gate)
	}
	if gate != nil {
		if err := gate.flush(); err != nil {
			return 0, err
		}
	}
	return copyHolding(st, newFastConn(conn), last)
}

// copyDown copies the stream to conn.
func copyDown(f CopyFunc, conn net.Conn, st Stream, last *atomic.Int64) (int64, error) {
	conn = newFastConn(conn) // writes only; Close and CloseWrite stay the caller's
	if f != nil {
		return f(conn, activity(st, last))
	}
	if w, ok := st.(readWaiter); ok {
		return copyStream(conn, st, w, last)
	}
	return copyHolding(conn, st, last)
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

// copyConn copies a socket to dst through its raw file descriptor, with
// the whole copy inside one RawConn.Read, so that
//
//   - the 64 KiB buffer is taken from the pool only when read(2) runs and
//     goes back before the goroutine parks: a relay waiting for data holds
//     none;
//   - the poller is prepared once per copy, not once per read.
//
// With gate, a first read that would block sends the open header alone
// before waiting; a first read with data sends it together with the data.
func copyConn(dst io.Writer, rc syscall.RawConn, last *atomic.Int64, gate *openGate) (int64, error) {
	c := &rawCopier{dst: dst, last: last, gate: gate}
	c.fn = c.step // one closure for the whole copy
	defer c.release()
	for {
		if err := rc.Read(c.fn); err != nil {
			return c.total, err
		}
		if !c.flushGate {
			return c.total, c.err
		}
		c.flushGate = false
		g := c.gate
		c.gate = nil
		if err := g.flush(); err != nil {
			return c.total, err
		}
	}
}

// rawCopier is the state of copyConn; step runs inside RawConn.Read.
type rawCopier struct {
	fn        func(fd uintptr) bool
	dst       io.Writer
	last      *atomic.Int64
	gate      *openGate
	bp        *[]byte
	total     int64
	err       error // set when step returns true without flushGate
	flushGate bool  // step returned to send the open header alone
}

// step reads and writes until read(2) says EAGAIN (false: park until
// readable) or the copy ends (true: EOF, an error, or the open header is
// due).
func (c *rawCopier) step(fd uintptr) bool {
	for {
		if c.bp == nil {
			c.bp = relayBufs.Get().(*[]byte)
		}
		n, err := readFD(fd, *c.bp)
		for err == syscall.EINTR {
			n, err = readFD(fd, *c.bp)
		}
		if err == syscall.EAGAIN {
			c.release()
			if c.gate != nil {
				c.flushGate = true
				return true
			}
			return false
		}
		if err != nil {
			c.err = os.NewSyscallError("read", err)
			return true
		}
		if n <= 0 {
			return true // EOF
		}
		if c.last != nil {
			c.last.Store(time.Now().UnixNano())
		}
		w, werr := c.dst.Write((*c.bp)[:n])
		c.total += int64(w)
		if c.gate != nil {
			c.gate.release()
			c.gate = nil
		}
		if werr == nil && w != n {
			werr = io.ErrShortWrite
		}
		if werr != nil {
			c.err = werr
			return true
		}
		// Read again even after a short read: a FIN (or RST) that came
		// with the data raises no edge of its own, so only the next
		// read(2) can see it.
	}
}

func (c *rawCopier) release() {
	if c.bp != nil {
		relayBufs.Put(c.bp)
		c.bp = nil
	}
}

// copyStream copies a stream that can wait for data without a buffer: it
// waits, then reads with a pooled buffer that goes back at once.
func copyStream(dst io.Writer, src io.Reader, w readWaiter, last *atomic.Int64) (int64, error) {
	var total int64
	scratch := make([]byte, 1)
	for {
		if err := w.waitReadable(scratch); err != nil {
			switch {
			case errors.Is(err, errNoWait) && total == 0:
				return copyHolding(dst, src, last)
			case err == io.EOF:
				// Read the EOF too: quic-go counts a stream as done once
				// its reader has seen it.
				bp := relayBufs.Get().(*[]byte)
				_, _ = src.Read(*bp)
				relayBufs.Put(bp)
				return total, nil
			}
			return total, err
		}
		bp := relayBufs.Get().(*[]byte)
		n, rerr := src.Read(*bp)
		if n > 0 {
			if last != nil {
				last.Store(time.Now().UnixNano())
			}
			w, werr := dst.Write((*bp)[:n])
			total += int64(w)
			if werr == nil && w != n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				relayBufs.Put(bp)
				return total, werr
			}
		}
		relayBufs.Put(bp)
		if rerr != nil {
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
	}
}

// copyHolding copies src to dst with a pooled buffer held throughout (for
// sources that cannot wait without one); io.EOF is a clean end.
func copyHolding(dst io.Writer, src io.Reader, last *atomic.Int64) (int64, error) {
	bp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if last != nil {
				last.Store(time.Now().UnixNano())
			}
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
			if w != n {
				return total, io.ErrShortWrite
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
