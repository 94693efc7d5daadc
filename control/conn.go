package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cachetun/cachetun/tunnel"
)

// ErrClosed is returned for a write on a Conn whose write side a final
// frame (a refusal, FrameRevoked) has closed.
var ErrClosed = errors.New("control stream closed for writing")

// Conn is the gateway's end of a control stream: frames are read by one
// goroutine and written by any, one frame at a time (x/crypto/ssh's
// channel Write and CloseWrite share unguarded state, and a GoAway or a
// FrameRevoked may be on its way while the session is set up).
type Conn struct {
	st     tunnel.Stream
	fr     FrameReader
	mu     sync.Mutex // guards writes and closed
	closed bool       // a final frame was written
}

// NewConn returns the Conn of the control stream st.
func NewConn(st tunnel.Stream) *Conn {
	return &Conn{st: st, fr: FrameReader{r: st, limit: MaxFrameSize}}
}

// Stream returns the control stream.
func (c *Conn) Stream() tunnel.Stream { return c.st }

// Read reads one frame from the client (at most MaxFrameSize). Like
// FrameReader's, a payload of at most 4 KiB is valid only until the next
// Read.
func (c *Conn) Read() (FrameType, []byte, error) { return c.fr.Read() }

// Write writes one frame, v encoded as JSON (nil: no payload), within
// timeout.
func (c *Conn) Write(typ FrameType, v any, timeout time.Duration) error {
	return c.write(typ, v, timeout, false)
}

// WriteRaw writes one frame with payload as it is (the binary frames of
// link.go), within timeout.
func (c *Conn) WriteRaw(typ FrameType, payload []byte, timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	_ = c.st.SetWriteDeadline(time.Now().Add(timeout))
	err := WriteFrame(c.st, typ, payload)
	_ = c.st.SetWriteDeadline(time.Time{})
	return err
}

// WriteFrames writes frames, one or more whole frames already encoded
// (a Link's), as they are, within timeout.
func (c *Conn) WriteFrames(frames []byte, timeout time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	_ = c.st.SetWriteDeadline(time.Now().Add(timeout))
	_, err := c.st.Write(frames)
	_ = c.st.SetWriteDeadline(time.Time{})
	return err
}

// Final writes one frame as Write does, then closes the write side: no
// frame follows it.
func (c *Conn) Final(typ FrameType, v any, timeout time.Duration) error {
	return c.write(typ, v, timeout, true)
}

func (c *Conn) write(typ FrameType, v any, timeout time.Duration, final bool) error {
	var payload []byte
	if v != nil {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode control frame %d: %w", typ, err)
		}
		payload = b
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	_ = c.st.SetWriteDeadline(time.Now().Add(timeout))
	err := WriteFrame(c.st, typ, payload)
	_ = c.st.SetWriteDeadline(time.Time{})
	if final {
		c.closed = true
		_ = c.st.CloseWrite()
	}
	return err
}

// refuseLinger is how long a refused client has to read the refusal before
// the gateway closes the session: closing a QUIC connection discards data
// in flight.
const refuseLinger = 2 * time.Second

// finish writes w as the last frame and gives the client up to
// refuseLinger to read it and close its side (what it still sends is read
// and discarded, at most 64 KiB).
func (c *Conn) finish(w *Welcome) {
	_ = c.Final(FrameWelcome, w, welcomeTimeout)
	_ = c.st.SetReadDeadline(time.Now().Add(refuseLinger))
	_, _ = io.Copy(io.Discard, io.LimitReader(c.st, 64<<10))
}
