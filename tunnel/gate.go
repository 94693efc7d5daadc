package tunnel

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Nothing buffered before authentication, on TLS+yamux.
//
// yamux buffers up to its initial window (256 KiB) for every stream a peer
// opens, and queues up to AcceptBacklog streams before anyone accepts
// them, so a client that never authenticates could make the gateway hold
// AcceptBacklog × 256 KiB (256 MiB at 1024). yamux has no hook to refuse a
// stream, so preAuthGate sits under it, between yamux's reader and the TLS
// connection. While the session is unauthenticated it parses yamux frame
// headers (hashicorp/yamux v0.1.2 const.go: version u8, type u8, flags
// u16, stream id u32, length u32; only a Data frame carries length bytes
// of payload) and passes on the frames of stream 0 (pings, go-away) and of
// the first stream the client opened, the control stream. At the first
// frame of any other stream it stops reading the socket: that frame and
// everything behind it stay in the kernel's socket buffer (and the
// client's send buffer, which TCP flow control then stops) until the
// server calls Authenticated, after which every byte passes through at the
// cost of one atomic load per Read, or until the session is closed.
//
// A client that opens a stream before its Hello is answered thus waits for
// the answer: a cachetun client opens the first connection's stream right
// behind its last Hello (client/early.go), and the gateway serves it once
// the Hello is verified. When the gateway refuses a Hello (DropEarly) the
// gate discards, from then on, the frames of such streams instead of
// waiting, so that the next Hello, or the client's end of the session, is
// read at once; yamux never learns of those streams. The wire is unchanged.
//
// The control stream itself is bounded too: yamux raises its window to
// MaxStreamWindowSize (4 MiB) when the server accepts it, so before
// authentication the gate passes at most MaxPreAuthControlBytes of its
// payload and ends the session beyond (ErrPreAuthLimit).
//
// MaxPreAuthControlBytes is what a client may send on the control stream
// before the server authenticated it: the open header (at most 516 bytes)
// and up to 6 Hello frames of at most control.MaxFrameSize fit with room to spare.
const MaxPreAuthControlBytes = 512 << 10

// ErrPreAuthLimit ends a TLS session whose client sent more than
// MaxPreAuthControlBytes on its control stream before authenticating.
var ErrPreAuthLimit = errors.New("client sent more than 512 KiB before authenticating")

type preAuthGate struct {
	io.ReadWriteCloser // the frameConn; Read goes through the gate

	open     chan struct{} // closed by Authenticated
	openOnce sync.Once
	isOpen   atomic.Bool
	closed   chan struct{} // closed by Close
	shut     sync.Once
	dropping chan struct{} // closed by DropEarly
	dropOnce sync.Once

	// Only yamux's receive loop reads, one Read at a time, so the state
	// below needs no lock.
	through bool                  // past authentication: no parsing
	hdr     [yamuxHeaderSize]byte // the current frame's header
	hdrOut  int                   // bytes of hdr handed to yamux; yamuxHeaderSize when none pending
	body    uint32                // payload bytes of the current frame still to pass
	control uint32                // id of the control stream; 0 until its SYN arrived
	ctrlIn  int                   // payload bytes of the control stream passed so far
}

// yamux frame types and flags (hashicorp/yamux const.go).
const (
	yamuxVersion  = 0
	yamuxTypeMax  = 3 // typeGoAway
	yamuxFlagSYN  = 1
	yamuxStreamID = 4 // offset of the stream id in the header
	yamuxLength   = 8 // offset of the length
)

func newPreAuthGate(c io.ReadWriteCloser) *preAuthGate {
	return &preAuthGate{ReadWriteCloser: c, open: make(chan struct{}), closed: make(chan struct{}), dropping: make(chan struct{}), hdrOut: yamuxHeaderSize}
}

// DropEarly makes the gate discard, until Authenticated, the frames of the
// streams it would hold back: the gateway refused a Hello, and a client
// whose streams followed it is done.
func (g *preAuthGate) DropEarly() {
	g.dropOnce.Do(func() { close(g.dropping) })
}

// Authenticated lets every stream through from now on.
func (g *preAuthGate) Authenticated() {
	g.openOnce.Do(func() {
		g.isOpen.Store(true)
		close(g.open)
	})
}

// Close closes the connection and releases a Read held at the gate.
func (g *preAuthGate) Close() error {
	g.shut.Do(func() { close(g.closed) })
	return g.ReadWriteCloser.Close()
}

// LocalAddr and RemoteAddr keep yamux's Session.LocalAddr/RemoteAddr
// working through the wrapper.
func (g *preAuthGate) LocalAddr() net.Addr {
	if a, ok := g.ReadWriteCloser.(interface{ LocalAddr() net.Addr }); ok {
		return a.LocalAddr()
	}
	return nil
}

func (g *preAuthGate) RemoteAddr() net.Addr {
	if a, ok := g.ReadWriteCloser.(interface{ RemoteAddr() net.Addr }); ok {
		return a.RemoteAddr()
	}
	return nil
}

func (g *preAuthGate) Read(p []byte) (int, error) {
	if g.through {
		return g.ReadWriteCloser.Read(p)
	}
	if g.hdrOut < yamuxHeaderSize { // hand out the rest of a passed header
		n := copy(p, g.hdr[g.hdrOut:])
		g.hdrOut += n
		return n, nil
	}
	if g.isOpen.Load() {
		g.through = true // raw bytes from here, even mid-frame
		return g.ReadWriteCloser.Read(p)
	}
	if g.body > 0 {
		n, err := g.ReadWriteCloser.Read(p[:min(uint32(len(p)), g.body)])
		g.body -= uint32(n)
		return n, err
	}
	for {
		if _, err := io.ReadFull(g.ReadWriteCloser, g.hdr[:]); err != nil {
			return 0, err
		}
		if g.admit() {
			break
		}
		select {
		case <-g.open:
		case <-g.closed:
			return 0, net.ErrClosed
		case <-g.dropping:
		}
		if g.isOpen.Load() {
			break
		}
		if g.hdr[1] == yamuxTypeData { // only a Data frame has a body
			if _, err := io.CopyN(io.Discard, g.ReadWriteCloser, int64(binary.BigEndian.Uint32(g.hdr[yamuxLength:]))); err != nil {
				return 0, err
			}
		}
	}
	if g.hdr[1] == yamuxTypeData {
		g.body = binary.BigEndian.Uint32(g.hdr[yamuxLength:])
		if id := binary.BigEndian.Uint32(g.hdr[yamuxStreamID:]); id == g.control && !g.isOpen.Load() {
			if g.ctrlIn += int(g.body); g.ctrlIn > MaxPreAuthControlBytes {
				return 0, ErrPreAuthLimit
			}
		}
	}
	n := copy(p, g.hdr[:])
	g.hdrOut = n
	return n, nil
}

// admit reports whether the frame in g.hdr may reach yamux before
// authentication.
func (g *preAuthGate) admit() bool {
	if g.hdr[0] != yamuxVersion || g.hdr[1] > yamuxTypeMax {
		return true // yamux ends the session on it
	}
	id := binary.BigEndian.Uint32(g.hdr[yamuxStreamID:])
	flags := binary.BigEndian.Uint16(g.hdr[2:4])
	switch {
	case id == 0: // session frames: ping, go-away
		return true
	case g.control == 0 && flags&yamuxFlagSYN != 0:
		g.control = id
		return true
	}
	return id == g.control
}
