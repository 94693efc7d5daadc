package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// relayBufSize is the copy buffer of each relay direction.
const relayBufSize = 32 << 10

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
		wg       sync.WaitGroup
		errOnce  sync.Once
		last     atomic.Int64
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
	last.Store(time.Now().UnixNano())
	if idle > 0 {
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
	stop := context.AfterFunc(ctx, func() { fail(context.Cause(ctx)) })
	defer stop()

	wg.Add(2)
	go func() {
		defer wg.Done()
		n, err := copyWith(up, st, conn, &last, idle > 0)
		res.ConnToStream = n
		if err != nil {
			fail(err)
			return
		}
		if err := st.CloseWrite(); err != nil {
			fail(err)
		}
	}()
	go func() {
		defer wg.Done()
		n, err := copyWith(down, conn, st, &last, idle > 0)
		res.StreamToConn = n
		if err != nil {
			fail(err)
			return
		}
		if cw, ok := conn.(closeWriter); ok {
			if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
				fail(err)
			}
		} else {
			_ = conn.Close()
		}
	}()
	wg.Wait()
	res.Idle = idleCut.Load()
	_ = st.Close()
	_ = conn.Close()
	return res
}

var errIdle = errors.New("idle timeout")

// ErrIdle reports whether err is the relay's idle cut.
func ErrIdle(err error) bool {
	return errors.Is(err, errIdle) || errors.Is(err, os.ErrDeadlineExceeded)
}

// copyWith copies with f, or with copyCounting when f is nil. Only when
// the idle timeout needs it is src wrapped to note activity.
func copyWith(f CopyFunc, dst io.Writer, src io.Reader, last *atomic.Int64, track bool) (int64, error) {
	if f == nil {
		return copyCounting(dst, src, last)
	}
	if track {
		src = &activityReader{r: src, last: last}
	}
	return f(dst, src)
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

// copyCounting copies src to dst with a pooled buffer; io.EOF is a clean end.
func copyCounting(dst io.Writer, src io.Reader, last *atomic.Int64) (int64, error) {
	bp := relayBufs.Get().(*[]byte)
	defer relayBufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			last.Store(time.Now().UnixNano())
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
