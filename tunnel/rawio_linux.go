package tunnel

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Socket I/O that keeps the Go scheduler out of the hot path.
//
// A read(2) or write(2) through the net package goes through the
// runtime's entersyscall, and when every processor was idle (a tunnel
// that waits for the next request most of the time) that wakes the
// runtime's monitor thread, which sleeps again a few microseconds later:
// two to four context switches per request and per process, each far
// dearer than the syscall itself on a virtual machine (BENCHMARKS.md,
// "Second pass"). The sockets here are non-blocking, so read(2)
// and write(2) return at once and need no scheduler bookkeeping:
// fastConn issues them as raw syscalls inside RawConn.Read and
// RawConn.Write, which still park the goroutine on the poller (with
// deadlines) when the socket is not ready.

// fastConn is a TCP connection whose Read and Write are raw syscalls.
// Everything else (deadlines, CloseWrite, Close) is the embedded
// *net.TCPConn's.
type fastConn struct {
	*net.TCPConn
	rc syscall.RawConn

	rmu  sync.Mutex // guards the read state; one Read at a time
	rfn  func(fd uintptr) bool
	rbuf []byte
	rn   int
	rerr error

	wmu  sync.Mutex // guards the write state; one Write at a time
	wfn  func(fd uintptr) bool
	wbuf []byte
	wn   int
	werr error
}

// newFastConn wraps c when it is a TCP connection, and returns c
// unchanged otherwise.
func newFastConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	f := &fastConn{TCPConn: tc, rc: rc}
	f.rfn = f.readStep
	f.wfn = f.writeStep
	return f
}

func (f *fastConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	f.rmu.Lock()
	defer f.rmu.Unlock()
	f.rbuf, f.rn, f.rerr = p, 0, nil
	err := f.rc.Read(f.rfn)
	n, rerr := f.rn, f.rerr
	f.rbuf, f.rerr = nil, nil
	if rerr == io.EOF {
		return n, io.EOF
	}
	return n, f.result("read", err, rerr)
}

func (f *fastConn) readStep(fd uintptr) bool {
	for {
		n, errno := sysRead(fd, f.rbuf)
		switch {
		case errno == syscall.EINTR:
			continue
		case errno == syscall.EAGAIN:
			return false // park until readable
		case errno != 0:
			f.rerr = errno
		case n == 0:
			f.rerr = io.EOF
		default:
			f.rn = n
		}
		return true
	}
}

func (f *fastConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	f.wmu.Lock()
	defer f.wmu.Unlock()
	f.wbuf, f.wn, f.werr = p, 0, nil
	err := f.rc.Write(f.wfn)
	n, werr := f.wn, f.werr
	f.wbuf, f.werr = nil, nil
	return n, f.result("write", err, werr)
}

func (f *fastConn) writeStep(fd uintptr) bool {
	for f.wn < len(f.wbuf) {
		n, errno := sysWrite(fd, f.wbuf[f.wn:])
		switch {
		case errno == syscall.EINTR:
			continue
		case errno == syscall.EAGAIN:
			return false // park until writable, then go on
		case errno != 0:
			f.werr = errno
			return true
		}
		f.wn += n
	}
	return true
}

// result is the error of a Read or Write: err from RawConn (closed,
// deadline), else errno from the syscall, else nil.
func (f *fastConn) result(op string, err, errno error) error {
	switch {
	case err != nil:
		return f.opError(op, err)
	case errno != nil:
		return f.opError(op, os.NewSyscallError(op, errno))
	}
	return nil
}

// opError gives errors the shape the net package gives them, so that
// callers' checks (net.ErrClosed, timeouts, ECONNRESET) work alike. An
// error RawConn already wrapped keeps its wrapping but gets the usual Op.
func (f *fastConn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		e := *oe
		e.Op = op
		return &e
	}
	return &net.OpError{Op: op, Net: "tcp", Source: f.LocalAddr(), Addr: f.RemoteAddr(), Err: err}
}

func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), e
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), e
}

// readFD is read(2) on a non-blocking socket, as a raw syscall.
func readFD(fd uintptr, p []byte) (int, error) {
	n, errno := sysRead(fd, p)
	if errno != 0 {
		return -1, errno
	}
	return n, nil
}

// rawCopy: the relay copies sockets through their descriptors.
const rawCopy = true
