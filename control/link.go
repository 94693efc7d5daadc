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
	if len(p) < 2 {
		return nil, fmt.Errorf("decode ack: %w: %d bytes", ErrBadResumeFrame, len(p))
	}
	n := int(binary.BigEndian.Uint16(p))
	if n > MaxAcksPerFrame || len(p) != 2+16*n {
		return nil, fmt.Errorf("decode ack: %w: %d entries in %d bytes", ErrBadResumeFrame, n, len(p))
	}
	out := make([]AckEntry, n)
	for i := range out {
		q := p[2+16*i:]
		out[i] = AckEntry{ID: binary.BigEndian.Uint64(q), Recv: binary.BigEndian.Uint64(q[8:])}
	}
	return out, nil
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
// peer's frames to the streams attached to it.
type Link struct {
	write func(typ FrameType, payload []byte) error

	flushMu sync.Mutex // one flush at a time: frames go out in order

	mu      sync.Mutex
	streams map[uint64]*tunnel.Resumable
	pending map[*tunnel.Resumable]struct{}
	queue   [][2][]byte // Fin and Reset frames: type, payload
	timer   *time.Timer
	due     time.Time
	closed  bool
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

// NewLink returns a Link that writes its frames with write (the control
// stream's writer, safe for use with the session's other frames).
func NewLink(write func(typ FrameType, payload []byte) error) *Link {
	return &Link{write: write, streams: make(map[uint64]*tunnel.Resumable), pending: make(map[*tunnel.Resumable]struct{})}
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
		l.kickLocked(0)
	} else {
		l.kickLocked(tunnel.AckDelay)
	}
}

// Fin implements tunnel.ResumeLink.
func (l *Link) Fin(id, offset uint64) {
	l.enqueue(FrameFin, AppendFin(nil, id, offset))
}

// Reset implements tunnel.ResumeLink.
func (l *Link) Reset(id uint64) { l.enqueue(FrameReset, AppendReset(nil, id)) }

func (l *Link) enqueue(typ FrameType, payload []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.queue = append(l.queue, [2][]byte{{byte(typ)}, payload})
	l.kickLocked(0)
}

// kickLocked has flush run within d.
func (l *Link) kickLocked(d time.Duration) {
	due := time.Now().Add(d)
	switch {
	case l.timer == nil:
		l.timer = time.AfterFunc(d, l.flush)
		l.due = due
	case due.Before(l.due):
		l.timer.Reset(d)
		l.due = due
	}
}

// Flush writes what is pending now (before the session is closed).
func (l *Link) Flush() { l.flush() }

// flush writes what is pending: the acks, then the Fins and Resets.
func (l *Link) flush() {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.mu.Lock()
	l.timer = nil
	if l.closed {
		l.mu.Unlock()
		return
	}
	acks := make([]*tunnel.Resumable, 0, len(l.pending))
	for r := range l.pending {
		acks = append(acks, r)
	}
	clear(l.pending)
	queue := l.queue
	l.queue = nil
	l.mu.Unlock()
	var batch []AckEntry
	for i, r := range acks {
		id, recv := r.TakeAck()
		batch = append(batch, AckEntry{ID: id, Recv: recv})
		if len(batch) == MaxAcksPerFrame || i == len(acks)-1 {
			if l.write(FrameAck, AppendAck(nil, batch)) != nil {
				return // the session is dying: its streams detach
			}
			batch = batch[:0]
		}
	}
	for _, f := range queue {
		if l.write(FrameType(f[0][0]), f[1]) != nil {
			return
		}
	}
}

// Handle gives a frame from the peer to the streams it names, when it is
// a FrameAck, FrameFin or FrameReset (handled true). Frames for streams
// not attached to this link are ignored: they ended, or moved on. An
// error is a frame that does not decode, or an ack beyond what was sent.
func (l *Link) Handle(typ FrameType, payload []byte) (handled bool, err error) {
	switch typ {
	case FrameAck:
		acks, err := DecodeAck(payload)
		if err != nil {
			return true, err
		}
		for _, a := range acks {
			if r := l.stream(a.ID); r != nil {
				if err := r.Acked(a.Recv); err != nil {
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
