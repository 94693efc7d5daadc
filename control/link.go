package control

// The control stream's side of resumable streams (tunnel.Resumable): the
// acks, Fins and Resets of a session's resumable streams travel as
// frames 9-11 on it, in both directions. Their payloads are binary:
//
//	FrameAck    count uint16, then count × (id uint64, recv uint64)
//	FrameFin    id uint64, offset uint64
//	FrameReset  id uint64
//
// all big-endian. A Link is one session's end of that traffic.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cachetun/cachetun/tunnel"
)

// MaxAcksPerFrame bounds the entries of one FrameAck (16 bytes each: one
// frame stays well under MaxFrameSize).
const MaxAcksPerFrame = 1024

// ErrBadResumeFrame is returned for a FrameAck, FrameFin or FrameReset
// payload that does not decode.
var ErrBadResumeFrame = errors.New("malformed resume frame")

// AckEntry is one stream's receive counter in a FrameAck.
type AckEntry struct {
	ID   uint64
	Recv uint64
}

// AppendAck appends the payload of a FrameAck of acks (at most
// MaxAcksPerFrame) to b.
func AppendAck(b []byte, acks []AckEntry) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(acks)))
	for _, a := range acks {
		b = binary.BigEndian.AppendUint64(b, a.ID)
		b = binary.BigEndian.AppendUint64(b, a.Recv)
	}
	return b
}

// DecodeAck decodes the payload of a FrameAck.
func DecodeAck(p []byte) ([]AckEntry, error) {
	n, err := ackEntries(p)
	if err != nil {
		return nil, err
	}
	out := make([]AckEntry, n)
	for i := range out {
		q := p[2+16*i:]
		out[i] = AckEntry{ID: binary.BigEndian.Uint64(q), Recv: binary.BigEndian.Uint64(q[8:])}
	}
	return out, nil
}

// ackEntries checks the payload of a FrameAck and returns its count of
// entries (Handle reads them in place, without DecodeAck's slice).
func ackEntries(p []byte) (int, error) {
	if len(p) < 2 {
		return 0, fmt.Errorf("decode ack: %w: %d bytes", ErrBadResumeFrame, len(p))
	}
	n := int(binary.BigEndian.Uint16(p))
	if n > MaxAcksPerFrame || len(p) != 2+16*n {
		return 0, fmt.Errorf("decode ack: %w: %d entries in %d bytes", ErrBadResumeFrame, n, len(p))
	}
	return n, nil
}

// AppendFin appends the payload of a FrameFin.
func AppendFin(b []byte, id, offset uint64) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(b, id), offset)
}

// DecodeFin decodes the payload of a FrameFin.
func DecodeFin(p []byte) (id, offset uint64, err error) {
	if len(p) != 16 {
		return 0, 0, fmt.Errorf("decode fin: %w: %d bytes, want 16", ErrBadResumeFrame, len(p))
	}
	return binary.BigEndian.Uint64(p), binary.BigEndian.Uint64(p[8:]), nil
}

// AppendReset appends the payload of a FrameReset.
func AppendReset(b []byte, id uint64) []byte { return binary.BigEndian.AppendUint64(b, id) }

// DecodeReset decodes the payload of a FrameReset.
func DecodeReset(p []byte) (uint64, error) {
	if len(p) != 8 {
		return 0, fmt.Errorf("decode reset: %w: %d bytes, want 8", ErrBadResumeFrame, len(p))
	}
	return binary.BigEndian.Uint64(p), nil
}

// Link is one session's end of its resumable streams' control traffic:
// it implements tunnel.ResumeLink (acks batched for at most
// tunnel.AckDelay, urgent ones and Fins and Resets at once, all written by
// one goroutine at a time, never the caller's), and Handle gives the
// peer's frames to the streams attached to it. Everything pending when a
// flush runs goes out in one write: under a new connection per request
// the Fins of many streams share one frame of the transport (one TLS
// record, one QUIC or yamux frame) instead of one each.
type Link struct {
	write func(frames []byte) error

	flushMu sync.Mutex // one flush at a time: frames go out in order
	wbuf    []byte     // the frames of the flush in progress; flushMu

	mu       sync.Mutex
	streams  map[uint64]*tunnel.Resumable
	pending  map[*tunnel.Resumable]struct{}
	queue    []byte      // Fin and Reset frames, encoded, in order
	timer    *time.Timer // made once, then Reset: under churn it is armed again for about every stream
	armed    bool        // timer runs for the acks pending
	due      time.Time
	flushing bool // a flusher goroutine runs: it takes what is queued before it ends
	closed   bool
	// early holds the Fins and Resets that came for an id not attached
	// (yet): a stream's open and its first control frames travel apart,
	// so a client that opens a stream and ends it at once can have its
	// Reset read before the gateway has attached the stream. Add applies
	// them. At most maxEarly ids, the oldest forgotten first.
	early      map[uint64]earlyEnd
	earlyOrder []uint64
}

// earlyEnd is what arrived for a stream before it was attached.
type earlyEnd struct {
	fin    bool
	offset uint64
	reset  bool
}

// maxEarly bounds Link.early: a session has at most
// max_streams_per_session streams opening at once, and frames for
// streams that ended or moved on also land here until they age out.
const maxEarly = 256

// NewLink returns a Link that writes its frames with write: frames is one
// or more whole control frames (WriteFrame's encoding), to be written to
// the control stream as they are, after any other frame written there
// (write is safe for use with the session's other frames) and not
// retained after write returns.
func NewLink(write func(frames []byte) error) *Link {
	return &Link{write: write, streams: make(map[uint64]*tunnel.Resumable), pending: make(map[*tunnel.Resumable]struct{})}
}

// AppendFrame appends one control frame, as WriteFrame writes it, to b.
func AppendFrame(b []byte, typ FrameType, payload []byte) []byte {
	b = append(b, byte(typ))
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// Add attaches r to the link: the peer's frames for r's id reach it. It
// reports false when the link has ended (DetachAll): r is not added, and
// the caller detaches it.
func (l *Link) Add(r *tunnel.Resumable) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.streams[r.ID()] = r
	e, ok := l.early[r.ID()]
	delete(l.early, r.ID())
	l.mu.Unlock()
	if ok {
		if e.fin {
			r.PeerFin(e.offset)
		}
		if e.reset {
			r.PeerReset()
		}
	}
	return true
}

// noteEarlyLocked records a Fin or Reset for an id not attached; l.mu
// held.
func (l *Link) noteEarlyLocked(id uint64, f func(*earlyEnd)) {
	if l.closed {
		return
	}
	if l.early == nil {
		l.early = make(map[uint64]earlyEnd)
	}
	e, ok := l.early[id]
	if !ok {
		for len(l.early) >= maxEarly && len(l.earlyOrder) > 0 {
			delete(l.early, l.earlyOrder[0])
			l.earlyOrder = l.earlyOrder[1:]
		}
		if len(l.earlyOrder) >= 2*maxEarly { // ids attached since: drop them
			kept := l.earlyOrder[:0]
			for _, o := range l.earlyOrder {
				if _, ok := l.early[o]; ok {
					kept = append(kept, o)
				}
			}
			l.earlyOrder = kept
		}
		l.earlyOrder = append(l.earlyOrder, id)
	}
	f(&e)
	l.early[id] = e
}

// Remove forgets r (it ended, or moved to another session).
func (l *Link) Remove(r *tunnel.Resumable) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.streams[r.ID()] == r {
		delete(l.streams, r.ID())
	}
	delete(l.pending, r)
}

// Len returns the streams attached to the link.
func (l *Link) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.streams)
}

// DetachAll ends the link, as its session died, and returns every
// stream attached to it, for the caller to detach
// (tunnel.Resumable.Detach) and resume on the next session: the caller
// knows whether a stream has moved on to another session meanwhile.
// Nothing is written after.
func (l *Link) DetachAll() []*tunnel.Resumable {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.timer != nil {
		l.timer.Stop()
	}
	l.armed = false
	out := make([]*tunnel.Resumable, 0, len(l.streams))
	for _, r := range l.streams {
		out = append(out, r)
	}
	clear(l.streams)
	clear(l.pending)
	l.queue = nil
	l.early, l.earlyOrder = nil, nil
	return out
}

// Ack implements tunnel.ResumeLink.
func (l *Link) Ack(r *tunnel.Resumable, urgent bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.pending[r] = struct{}{}
	if urgent {
		l.kickLocked()
	} else {
		l.armLocked(tunnel.AckDelay)
	}
}

// Fin implements tunnel.ResumeLink.
func (l *Link) Fin(id, offset uint64) {
	var p [16]byte
	l.enqueue(FrameFin, AppendFin(p[:0], id, offset))
}

// Reset implements tunnel.ResumeLink.
func (l *Link) Reset(id uint64) {
	var p [8]byte
	l.enqueue(FrameReset, AppendReset(p[:0], id))
}

func (l *Link) enqueue(typ FrameType, payload []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.queue = AppendFrame(l.queue, typ, payload)
	l.kickLocked()
}

// armLocked has a flush run within d (the acks' batching).
func (l *Link) armLocked(d time.Duration) {
	due := time.Now().Add(d)
	switch {
	case l.timer == nil:
		l.timer = time.AfterFunc(d, l.timerFired)
	case !l.armed || due.Before(l.due):
		l.timer.Reset(d)
	default:
		return
	}
	l.armed, l.due = true, due
}

// timerFired runs the flush the acks waited for. A run that a flush's
// Stop came too late for finds the timer disarmed and does nothing; one
// whose timer was armed again meanwhile flushes early, and its Reset's
// run then finds nothing armed.
func (l *Link) timerFired() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.armed {
		return
	}
	l.armed = false
	if !l.closed {
		l.kickLocked()
	}
}

// kickLocked has a flush run now: a flusher goroutine is started unless
// one runs, which then takes what was queued meanwhile in its next write.
func (l *Link) kickLocked() {
	if l.flushing {
		return
	}
	l.flushing = true
	tunnel.Go(l.flusher) // it writes to the control stream: a deep stack, see tunnel.Go
}

// flusher writes what is pending until nothing is.
func (l *Link) flusher() {
	for l.flushOnce(true) {
	}
}

// Flush writes what is pending now (before the session is closed).
func (l *Link) Flush() { l.flushOnce(false) }

// flushOnce writes what is pending in one write: the acks, then the Fins
// and Resets. The flusher (flusher true) is told whether to go on: false
// once it found nothing pending, and then it no longer runs.
func (l *Link) flushOnce(flusher bool) bool {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.mu.Lock()
	if l.closed || (len(l.pending) == 0 && len(l.queue) == 0) {
		if flusher {
			l.flushing = false
		}
		l.mu.Unlock()
		return false
	}
	if l.armed { // this write carries the acks it waited for
		l.timer.Stop()
		l.armed = false
	}
	acks := make([]*tunnel.Resumable, 0, len(l.pending))
	for r := range l.pending {
		acks = append(acks, r)
	}
	clear(l.pending)
	b := l.wbuf[:0]
	queue := l.queue
	l.queue = nil
	l.mu.Unlock()
	for len(acks) > 0 {
		n := min(len(acks), MaxAcksPerFrame)
		at := len(b)
		b = append(b, byte(FrameAck), 0, 0, 0, 0, byte(n>>8), byte(n))
		for _, r := range acks[:n] {
			id, recv := r.TakeAck()
			b = binary.BigEndian.AppendUint64(b, id)
			b = binary.BigEndian.AppendUint64(b, recv)
		}
		binary.BigEndian.PutUint32(b[at+1:], uint32(len(b)-at-5))
		acks = acks[n:]
	}
	b = append(b, queue...)
	err := l.write(b)
	if cap(b) <= 64<<10 { // a burst's buffer is not kept
		l.wbuf = b[:0]
	}
	if err != nil { // the session is dying: its streams detach
		if flusher {
			l.mu.Lock()
			l.flushing = false
			l.mu.Unlock()
		}
		return false
	}
	return true
}

// Handle gives a frame from the peer to the streams it names, when it is
// a FrameAck, FrameFin or FrameReset (handled true). Frames for streams
// not attached to this link are ignored: they ended, or moved on. An
// error is a frame that does not decode, or an ack beyond what was sent.
func (l *Link) Handle(typ FrameType, payload []byte) (handled bool, err error) {
	switch typ {
	case FrameAck:
		n, err := ackEntries(payload)
		if err != nil {
			return true, err
		}
		for i := range n {
			q := payload[2+16*i:]
			if r := l.stream(binary.BigEndian.Uint64(q)); r != nil {
				if err := r.Acked(binary.BigEndian.Uint64(q[8:])); err != nil {
					return true, err
				}
			}
		}
	case FrameFin:
		id, off, err := DecodeFin(payload)
		if err != nil {
			return true, err
		}
		if r := l.streamOrEarly(id, func(e *earlyEnd) { e.fin, e.offset = true, off }); r != nil {
			r.PeerFin(off)
		}
	case FrameReset:
		id, err := DecodeReset(payload)
		if err != nil {
			return true, err
		}
		if r := l.streamOrEarly(id, func(e *earlyEnd) { e.reset = true }); r != nil {
			r.PeerReset()
		}
	default:
		return false, nil
	}
	return true, nil
}

// streamOrEarly returns the stream attached as id, or records what came
// for it (note) until it is attached.
func (l *Link) streamOrEarly(id uint64, note func(*earlyEnd)) *tunnel.Resumable {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r := l.streams[id]; r != nil {
		return r
	}
	l.noteEarlyLocked(id, note)
	return nil
}

func (l *Link) stream(id uint64) *tunnel.Resumable {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.streams[id]
}
