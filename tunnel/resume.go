package tunnel

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// A Resumable is a stream that outlives the session it was opened on: it
// runs over a sequence of underlying streams, one per session, and when a
// session dies it detaches and waits (at most its grace) for Attach with
// the stream of a new session. Nothing is lost, duplicated or reordered:
//
//   - sent counts the bytes the application wrote, recv the bytes Read
//     delivered to it. Each end tells the other its recv: in acks (the
//     link's Ack frames, batched) while attached, and in the resume
//     handshake.
//   - Written bytes stay in a replay buffer until the peer acknowledges
//     them. The buffer is bounded (ResumableConfig.Buffer, and a
//     ResumeBudget shared by many streams): a Write that would exceed a
//     bound blocks until acks free room. Attach drops what the peer's recv
//     says it has and replays the rest on the new stream.
//   - An underlying stream's EOF or error is not final (on SSH a dying
//     connection ends its channels with a plain EOF): Read returns io.EOF
//     only once the peer's Fin has come over the link and recv has reached
//     its offset; a peer's Reset fails the stream. A local CloseWrite sends
//     Fin (again after every Attach), Abort sends Reset.
//   - Bytes read from an underlying stream after it was detached are
//     dropped uncounted: the peer replays them.
//
// The relay relays a Resumable like any Stream. A Resumable is safe for
// one reader and one writer at a time, as every Stream.

// DefaultResumeBuffer is the replay buffer of one resumable stream.
const DefaultResumeBuffer = 4 << 20

// AckUrgent is how many received bytes, not yet acknowledged, make a
// Resumable ask its link for an ack at once rather than batched.
const AckUrgent = 512 << 10

// AckDelay is how long a link may batch acks.
const AckDelay = 50 * time.Millisecond

// resumeChunk is the allocation unit of a replay buffer.
const resumeChunk = 4 << 10

// smallChunk is the chunk an empty replay buffer takes for a write of at
// most its size. A request-response stream (a GET, its reply) holds one
// small write until the peer's ack empties the buffer again: 256 bytes
// instead of 4 KiB while it waits, and in the pool after a burst of new
// connections (2,000 idle QUIC connections with one GET each held 2.6 KiB
// each of chunks the acks had freed).
const smallChunk = 256

var (
	resumeChunks = sync.Pool{New: func() any { b := make([]byte, resumeChunk); return &b }}
	smallChunks  = sync.Pool{New: func() any { b := make([]byte, smallChunk); return &b }}
)

// chunkPool is the pool of chunks of size bytes, or of the chunk a write
// of size bytes starts an empty buffer with.
func chunkPool(size int) *sync.Pool {
	if size <= smallChunk {
		return &smallChunks
	}
	return &resumeChunks
}

// Errors of a Resumable.
var (
	// ErrResumeExpired: the stream was not re-attached within its grace.
	ErrResumeExpired = errors.New("stream not resumed within its grace")
	// ErrPeerReset: the peer aborted the stream (its Reset).
	ErrPeerReset = errors.New("stream reset by the peer")
	// ErrResumeOffset: the peer's counter does not fit what was sent.
	ErrResumeOffset = errors.New("resume offset out of range")
	errAborted      = errors.New("stream aborted")
)

// ResumeLink is what a Resumable needs of the session it is attached to
// besides the stream: the control stream, which carries its acks, Fin and
// Reset to the peer (package control implements it). Its methods must not
// block on the Resumable.
type ResumeLink interface {
	// Ack asks for r's receive counter (r.TakeAck) to be sent to the
	// peer: within AckDelay, or at once when urgent.
	Ack(r *Resumable, urgent bool)
	// Fin tells the peer that the stream's write side ended after offset
	// bytes.
	Fin(id, offset uint64)
	// Reset tells the peer that the stream was aborted.
	Reset(id uint64)
}

// ResumableConfig configures a Resumable.
type ResumableConfig struct {
	ID    uint64
	Token ResumeToken
	// Buffer bounds the replay buffer; 0: DefaultResumeBuffer.
	Buffer int
	// Budget, when set, bounds the replay memory of every stream that
	// shares it; a Write waits for it as for Buffer.
	Budget *ResumeBudget
	// Grace is how long the stream waits detached before it fails both
	// ways with ErrResumeExpired; 0: it fails at once when detached.
	Grace time.Duration
	// OnEnd, when set, is called once, in its own goroutine or the
	// caller's, when the stream is final (closed, aborted, reset, expired).
	OnEnd func(r *Resumable, err error)
}

// Resumable is a stream that can be moved from one session to another;
// see the top of this file.
type Resumable struct {
	cfg     ResumableConfig
	bound   int
	dead    atomic.Bool // final: wakes budget waiters
	endOnce sync.Once

	wmu sync.Mutex // serialises writes to the underlying stream: Write, CloseWrite, Attach's replay

	mu         sync.Mutex
	cond       sync.Cond
	cur        Stream // nil while detached
	link       ResumeLink
	gen        uint64 // counts attachments and detachments
	curBad     bool   // a write to cur failed: buffer only until the next Attach
	readEnded  bool   // cur's read side ended (EOF or error)
	replaying  bool   // Attach replays from buf: free nothing
	ownedWrite bool   // Write writes from a chunk of buf: an end frees nothing
	sent       uint64
	acked      uint64
	recv       uint64
	reported   uint64
	ackAsked   bool
	reserved   int
	credit     int // budget taken ahead and not yet charged to buf (takeBudgetLocked)
	buf        replayBuf
	hasFin     bool
	finAt      uint64
	localFin   bool
	err        error // final
	grace      *time.Timer
	rdl, wdl   time.Time
	dlTimer    *time.Timer
}

// NewResumable returns a Resumable attached to st (its first underlying
// stream, opened or accepted with the request's Resumable set) and link.
func NewResumable(cfg ResumableConfig, st Stream, link ResumeLink) *Resumable {
	r := &Resumable{cfg: cfg, bound: cfg.Buffer, cur: st, link: link}
	if r.bound <= 0 {
		r.bound = DefaultResumeBuffer
	}
	r.cond.L = &r.mu
	return r
}

// ID returns the stream's id.
func (r *Resumable) ID() uint64 { return r.cfg.ID }

// Token returns the stream's resume token.
func (r *Resumable) Token() ResumeToken { return r.cfg.Token }

// Recv returns the bytes Read has delivered: what the resume handshake
// tells the peer. Call it while the stream is detached.
func (r *Resumable) Recv() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.recv
}

// Buffered returns the bytes held for replay (written, not acknowledged).
func (r *Resumable) Buffered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.n
}

// Detached reports whether the stream waits for Attach.
func (r *Resumable) Detached() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur == nil && r.err == nil
}

// Err returns the error that made the stream final, or nil.
func (r *Resumable) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// TakeAck returns the stream's id and receive counter for an ack and
// notes it as reported (the link calls it when it sends the ack).
func (r *Resumable) TakeAck() (id, recv uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reported, r.ackAsked = r.recv, false
	return r.cfg.ID, r.recv
}

// Acked is the peer's ack: it has received n bytes of the stream. Acked
// bytes leave the replay buffer. An n beyond what was sent is a protocol
// error.
func (r *Resumable) Acked(n uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n > r.sent {
		return fmt.Errorf("ack stream %d: %w: %d acked, %d sent", r.cfg.ID, ErrResumeOffset, n, r.sent)
	}
	r.ackLocked(n)
	return nil
}

func (r *Resumable) ackLocked(n uint64) {
	if n <= r.acked {
		return
	}
	r.acked = n
	if !r.replaying {
		r.trimLocked()
	}
	r.cond.Broadcast()
}

// trimLocked frees the acknowledged bytes of the buffer.
func (r *Resumable) trimLocked() {
	drop := int(r.buf.n - int(r.sent-r.acked))
	if drop > 0 {
		r.releaseBudgetLocked(r.buf.drop(drop))
	}
}

// PeerFin is the peer's Fin: its write side ended after offset bytes.
func (r *Resumable) PeerFin(offset uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.hasFin {
		r.hasFin, r.finAt = true, offset
		r.cond.Broadcast()
	}
}

// PeerReset is the peer's Reset: the stream fails both ways.
func (r *Resumable) PeerReset() {
	r.mu.Lock()
	r.failLocked(ErrPeerReset)
	r.mu.Unlock()
	r.notifyEnd()
}

// Detach lets go of the current underlying stream (aborting it), as when
// its session died: Read and Write wait (Write up to the buffer's bound)
// for Attach, at most the grace. Detaching a detached or final stream does
// nothing.
func (r *Resumable) Detach() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.detachLocked()
}

func (r *Resumable) detachLocked() {
	if r.cur == nil || r.err != nil {
		return
	}
	abortAsync(r.cur)
	r.cur, r.link = nil, nil
	r.gen++
	r.curBad, r.readEnded = false, false
	gen := r.gen
	r.grace = time.AfterFunc(r.cfg.Grace, func() { r.expire(gen) })
	r.cond.Broadcast()
}

func (r *Resumable) expire(gen uint64) {
	r.mu.Lock()
	if r.cur != nil || r.gen != gen || r.err != nil {
		r.mu.Unlock()
		return
	}
	r.failLocked(fmt.Errorf("%w (%s)", ErrResumeExpired, r.cfg.Grace))
	r.mu.Unlock()
	r.notifyEnd()
}

// Attach continues the stream on st, the stream of a new session whose
// resume handshake told that the peer has received peerRecv bytes: the
// bytes it lacks are written to st first, then the stream goes on, and a
// local Fin is sent again. A stream still attached is detached first (the
// client moved to a new session before the gateway noticed the old one
// die). On a final stream, or with a peerRecv that does not fit, st is
// aborted and the error returned.
func (r *Resumable) Attach(st Stream, peerRecv uint64, link ResumeLink) error {
	r.Detach()
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.Lock()
	if r.err != nil {
		err := r.err
		r.mu.Unlock()
		st.Abort()
		return err
	}
	if peerRecv < r.acked || peerRecv > r.sent {
		err := fmt.Errorf("attach stream %d: %w: the peer has %d, %d acked, %d sent", r.cfg.ID, ErrResumeOffset, peerRecv, r.acked, r.sent)
		r.failLocked(err)
		r.mu.Unlock()
		st.Abort()
		r.notifyEnd()
		return err
	}
	if r.grace != nil {
		r.grace.Stop()
		r.grace = nil
	}
	r.ackLocked(peerRecv)
	r.trimLocked()
	replay := r.buf.slices()
	r.cur, r.link = st, link
	r.gen++
	gen := r.gen
	r.curBad, r.readEnded, r.replaying = false, false, true
	r.reported = r.recv // the handshake told the peer
	if !r.rdl.IsZero() {
		_ = st.SetReadDeadline(r.rdl)
	}
	if !r.wdl.IsZero() {
		_ = st.SetWriteDeadline(r.wdl)
	}
	fin, sent := r.localFin, r.sent
	r.mu.Unlock()
	bad := false
	for _, b := range replay {
		if _, err := st.Write(b); err != nil {
			bad = true
			break
		}
	}
	if fin && !bad {
		_ = st.CloseWrite()
	}
	r.mu.Lock()
	r.replaying = false
	r.trimLocked()
	if r.err != nil { // failed during the replay: free what it pinned
		r.releaseBudgetLocked(r.buf.drop(r.buf.n))
	}
	if bad && r.gen == gen {
		r.curBad = true
	}
	r.cond.Broadcast()
	r.mu.Unlock()
	if fin {
		link.Fin(r.cfg.ID, sent)
	}
	return nil
}

// Read reads what the peer wrote, waiting while detached.
func (r *Resumable) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.mu.Lock()
	for {
		if err := r.readErrLocked(); err != nil {
			r.mu.Unlock()
			return 0, err
		}
		if r.cur == nil || r.readEnded {
			r.cond.Wait()
			continue
		}
		cur, gen := r.cur, r.gen
		r.mu.Unlock()
		n, err := cur.Read(p)
		r.mu.Lock()
		if gen != r.gen {
			continue // read from a detached stream: the peer replays it
		}
		if n > 0 {
			r.recv += uint64(n)
			link, urgent, ask := r.link, r.recv-r.reported >= AckUrgent, !r.ackAsked
			if link != nil && (urgent || ask) {
				r.ackAsked = true
			} else {
				link = nil
			}
			r.mu.Unlock()
			if link != nil {
				link.Ack(r, urgent)
			}
			return n, nil
		}
		if err != nil {
			if rerr := r.curReadErrLocked(err); rerr != nil {
				r.mu.Unlock()
				r.notifyEnd()
				return 0, rerr
			}
		}
	}
}

// readErrLocked is what a Read returns without reading: the final error,
// io.EOF once the peer's Fin is reached, a passed deadline.
func (r *Resumable) readErrLocked() error {
	switch {
	case r.err != nil:
		return r.err
	case r.hasFin && r.recv >= r.finAt:
		return io.EOF
	case !r.rdl.IsZero() && !time.Now().Before(r.rdl):
		return os.ErrDeadlineExceeded
	}
	return nil
}

// curReadErrLocked handles an error of the current stream's Read or
// WaitReadable: a refusal of the open is final, a deadline of ours is
// returned, anything else ends only this stream's read side (the link's
// Fin, Reset or a detach decides what follows).
func (r *Resumable) curReadErrLocked(err error) error {
	if _, refused := AsStatusError(err); refused {
		r.failLocked(err)
		return err
	}
	if errors.Is(err, os.ErrDeadlineExceeded) && !r.rdl.IsZero() && !time.Now().Before(r.rdl) {
		return err
	}
	r.readEnded = true
	return nil
}

// WaitReadable waits until a Read would not block, while detached too.
// Over a transport that cannot wait (SSH) it returns ErrNoWait.
func (r *Resumable) WaitReadable() error {
	r.mu.Lock()
	for {
		if err := r.readErrLocked(); err != nil {
			r.mu.Unlock()
			if err == io.EOF {
				return io.EOF
			}
			return err
		}
		if r.cur == nil || r.readEnded {
			r.cond.Wait()
			continue
		}
		cur, gen := r.cur, r.gen
		r.mu.Unlock()
		err := cur.WaitReadable()
		r.mu.Lock()
		if gen != r.gen {
			continue
		}
		switch {
		case err == nil:
			r.mu.Unlock()
			return nil
		case errors.Is(err, ErrNoWait):
			r.mu.Unlock()
			return ErrNoWait
		}
		if rerr := r.curReadErrLocked(err); rerr != nil {
			r.mu.Unlock()
			r.notifyEnd()
			return rerr
		}
	}
}

// maxPiece bounds what one step of Write reserves and copies.
const maxPiece = 64 << 10

// Write buffers p for replay and writes it to the current stream; while
// detached it only buffers. It blocks while the buffer or the budget is
// full.
func (r *Resumable) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		k := min(len(p), maxPiece, r.bound)
		if err := r.writePiece(p[:k], nil); err != nil {
			return total, err
		}
		total += k
		p = p[k:]
	}
	return total, nil
}

// ownMin is the least a relay write hands over its buffer for
// (writeOwned) rather than have it copied: an owned buffer is charged
// its capacity, so it holds at least half of what it is charged.
const ownMin = relayBufSize / 2

// writeOwned is Write of (*bp)[:n] for the relay: the replay buffer keeps
// bp itself instead of a copy (bp is the Resumable's from now: it goes
// back to relayBufs once acknowledged), and is charged its capacity.
func (r *Resumable) writeOwned(bp *[]byte, n int) error {
	if n < ownMin || cap(*bp) > min(maxPiece, r.bound) {
		_, err := r.Write((*bp)[:n])
		relayBufs.Put(bp)
		return err
	}
	return r.writePiece((*bp)[:n], bp)
}

// writePiece buffers and writes one piece: b copied, or, with bp (b's
// buffer), b kept in bp.
func (r *Resumable) writePiece(b []byte, bp *[]byte) error {
	charge := len(b)
	if bp != nil {
		charge = cap(*bp)
	}
	r.wmu.Lock()
	r.mu.Lock()
	if !r.fitsLocked(charge) { // wait for room with neither lock held
		r.mu.Unlock()
		r.wmu.Unlock()
		if err := r.reserve(charge); err != nil {
			if bp != nil {
				relayBufs.Put(bp)
			}
			return err
		}
		r.wmu.Lock()
		r.mu.Lock()
		r.reserved -= charge
	}
	if r.err != nil || r.localFin {
		err := r.writeErrLocked()
		r.releaseBudgetLocked(charge)
		r.mu.Unlock()
		r.wmu.Unlock()
		if bp != nil {
			relayBufs.Put(bp)
		}
		return err
	}
	if bp != nil {
		r.buf.appendOwned(bp, len(b))
		// b is written from the replay buffer itself: an end of the
		// stream must not free it meanwhile (the pool would hand it to
		// another stream while this write still reads it). An ack may:
		// what the peer acknowledged, the transport has read.
		r.ownedWrite = true
	} else {
		r.buf.append(b)
	}
	r.sent += uint64(len(b))
	cur, gen, bad := r.cur, r.gen, r.curBad
	r.mu.Unlock()
	var werr error
	if cur != nil && !bad {
		_, werr = cur.Write(b)
	}
	if werr != nil || bp != nil {
		r.mu.Lock()
		if werr != nil && gen == r.gen {
			r.curBad = true
		}
		if bp != nil {
			r.ownedWrite = false
			if r.err != nil && !r.replaying { // ended during the write: free what it pinned
				r.releaseBudgetLocked(r.buf.drop(r.buf.n))
			}
		}
		r.mu.Unlock()
	}
	r.wmu.Unlock()
	return nil
}

func (r *Resumable) writeErrLocked() error {
	if r.err != nil {
		return r.err
	}
	return fmt.Errorf("write stream %d: %w", r.cfg.ID, net.ErrClosed)
}

// fitsLocked takes k bytes of the buffer's bound and of the budget for a
// write that goes on at once, if they are there without waiting and
// nothing stops the write (else false: reserve waits, or says why not).
// The budget is taken with r.mu held: its locks come after r.mu.
func (r *Resumable) fitsLocked(k int) bool {
	return r.err == nil && !r.localFin && r.wdl.IsZero() && r.buf.mem+r.reserved+k <= r.bound &&
		r.takeBudgetLocked(k)
}

// budgetQuantum is the least a stream takes of its budget at a time. The
// budget's counters are shared by every stream of a key and of the
// gateway, and an atomic add on a counter another CPU just changed was
// most of what resumption cost per request (BENCHMARKS.md, "What stream
// resumption costs per request"): a stream takes at least this much and
// keeps what its write did not use as credit for the next ones, so small
// writes (requests, replies) reach the shared counters about once per
// quantum or per ack instead of once each.
const budgetQuantum = resumeChunk

// takeBudgetLocked takes k bytes of the budget for a write: from the
// stream's credit, else at least budgetQuantum from the budget without
// waiting (false if the budget lacks it: reserve then waits for k alone).
func (r *Resumable) takeBudgetLocked(k int) bool {
	if r.cfg.Budget == nil {
		return true
	}
	if r.credit >= k {
		r.credit -= k
		return true
	}
	q := max(k-r.credit, budgetQuantum)
	if !r.cfg.Budget.tryAcquire(int64(q), false) {
		return false
	}
	r.credit += q - k
	return true
}

// releaseBudgetLocked gives back n bytes the buffer freed. While the
// buffer still holds bytes the stream keeps up to budgetQuantum of it as
// credit; once the buffer is empty or the stream is final it keeps none,
// so an idle or ended stream holds no budget it does not use.
func (r *Resumable) releaseBudgetLocked(n int) {
	if r.cfg.Budget == nil {
		return
	}
	r.credit += n
	keep := 0
	if r.buf.n > 0 && r.err == nil {
		keep = min(r.credit, budgetQuantum)
	}
	if give := r.credit - keep; give > 0 {
		r.credit = keep
		r.cfg.Budget.release(give)
	}
}

// reserve waits until k more bytes fit the buffer and the budget.
func (r *Resumable) reserve(k int) error {
	r.mu.Lock()
	for {
		switch {
		case r.err != nil || r.localFin:
			err := r.writeErrLocked()
			r.mu.Unlock()
			return err
		case !r.wdl.IsZero() && !time.Now().Before(r.wdl):
			r.mu.Unlock()
			return os.ErrDeadlineExceeded
		}
		if r.buf.mem+r.reserved+k <= r.bound {
			break
		}
		r.cond.Wait()
	}
	r.reserved += k
	r.mu.Unlock()
	if !r.cfg.Budget.acquire(k, r.dead.Load) {
		r.mu.Lock()
		r.reserved -= k
		err := r.writeErrLocked()
		r.mu.Unlock()
		return err
	}
	return nil
}

// CloseWrite ends the write side: the peer reads io.EOF once it has every
// byte, after the Fin sent over the link.
func (r *Resumable) CloseWrite() error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.Lock()
	if r.err != nil {
		err := r.err
		r.mu.Unlock()
		return err
	}
	if r.localFin {
		r.mu.Unlock()
		return nil
	}
	r.localFin = true
	cur, link, bad, sent := r.cur, r.link, r.curBad, r.sent
	r.cond.Broadcast()
	r.mu.Unlock()
	if cur != nil {
		if !bad {
			_ = cur.CloseWrite()
		}
		link.Fin(r.cfg.ID, sent)
	}
	return nil
}

// Close releases the stream. After both ends' Fins it is a clean end;
// before, it is an Abort (the peer is told with Reset).
func (r *Resumable) Close() error {
	r.mu.Lock()
	clean := r.localFin && r.hasFin && r.recv >= r.finAt
	if r.err != nil {
		r.mu.Unlock()
		return nil
	}
	if !clean {
		r.mu.Unlock()
		r.Abort()
		return nil
	}
	cur := r.cur
	r.cur = nil
	r.failLocked(net.ErrClosed)
	r.mu.Unlock()
	if cur != nil {
		_ = cur.Close()
	}
	r.notifyEnd()
	return nil
}

// Abort resets the stream: the peer is told with Reset, both ways fail.
func (r *Resumable) Abort() {
	r.mu.Lock()
	if r.err != nil {
		r.mu.Unlock()
		return
	}
	link := r.link
	r.failLocked(errAborted)
	r.mu.Unlock()
	if link != nil {
		link.Reset(r.cfg.ID)
	}
	r.notifyEnd()
}

// Fail ends the stream both ways with err without telling the peer (its
// end is cut by the same cause: a revocation, a drain).
func (r *Resumable) Fail(err error) {
	r.mu.Lock()
	r.failLocked(err)
	r.mu.Unlock()
	r.notifyEnd()
}

// failLocked makes the stream final with err: the current stream is
// aborted, the buffer freed, every waiter woken.
func (r *Resumable) failLocked(err error) {
	if r.err != nil {
		return
	}
	r.err = err
	r.dead.Store(true)
	if r.cur != nil {
		abortAsync(r.cur)
		r.cur = nil
	}
	r.link = nil
	if r.grace != nil {
		r.grace.Stop()
		r.grace = nil
	}
	if r.dlTimer != nil {
		r.dlTimer.Stop()
	}
	if !r.replaying && !r.ownedWrite {
		r.releaseBudgetLocked(r.buf.drop(r.buf.n))
	}
	r.cond.Broadcast()
	r.cfg.Budget.wake()
}

// abortAsync aborts st without waiting: on a transport whose session just
// died the abort may wait for its writer (yamux sends its FIN through the
// session's send queue, for up to its write timeout), and a Resumable
// never waits for its old stream under its lock.
func abortAsync(st Stream) { go st.Abort() }

func (r *Resumable) notifyEnd() {
	r.mu.Lock()
	err := r.err
	r.mu.Unlock()
	if err == nil || r.cfg.OnEnd == nil {
		return
	}
	r.endOnce.Do(func() { r.cfg.OnEnd(r, err) })
}

// FlushOpen sends the current stream's open header, if still unsent.
func (r *Resumable) FlushOpen() error {
	r.mu.Lock()
	cur := r.cur
	r.mu.Unlock()
	if cur == nil {
		return nil
	}
	return cur.FlushOpen()
}

// SetDeadline sets both deadlines.
func (r *Resumable) SetDeadline(t time.Time) error {
	_ = r.SetReadDeadline(t)
	return r.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline, kept across attachments.
func (r *Resumable) SetReadDeadline(t time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rdl = t
	r.armDeadlineLocked(t)
	if r.cur != nil {
		return r.cur.SetReadDeadline(t)
	}
	return nil
}

// SetWriteDeadline sets the write deadline, kept across attachments.
func (r *Resumable) SetWriteDeadline(t time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.wdl = t
	r.armDeadlineLocked(t)
	if r.cur != nil {
		return r.cur.SetWriteDeadline(t)
	}
	return nil
}

// armDeadlineLocked wakes waiters when t passes.
func (r *Resumable) armDeadlineLocked(t time.Time) {
	if t.IsZero() {
		return
	}
	if r.dlTimer != nil {
		r.dlTimer.Stop()
	}
	r.dlTimer = time.AfterFunc(time.Until(t), func() {
		r.mu.Lock()
		r.cond.Broadcast()
		r.mu.Unlock()
	})
}

// replayBuf holds the unacknowledged bytes in order, in chunks: small
// writes are copied into pooled resumeChunk chunks (the first one
// smallChunk when the write that starts the buffer fits in it), a large
// one written from a relay buffer keeps that buffer (writeOwned). The
// first chunk's bytes before off are gone.
type replayBuf struct {
	chunks []replayChunk
	off    int // start in chunks[0]
	n      int // bytes held
	mem    int // bytes charged: the copied bytes held, and each owned buffer's capacity
}

// replayChunk is one chunk of a replayBuf: (*b)[:len] holds bytes; an
// owned one (a relay buffer) is charged its whole capacity and goes back
// to relayBufs, a copied one is charged its bytes.
type replayChunk struct {
	b     *[]byte
	len   int32 // at most maxPiece
	owned bool
}

func (b *replayBuf) append(p []byte) {
	b.n += len(p)
	b.mem += len(p)
	for len(p) > 0 {
		if k := len(b.chunks); k == 0 || b.chunks[k-1].owned || int(b.chunks[k-1].len) == len(*b.chunks[k-1].b) {
			b.grow(len(p))
			pool := &resumeChunks
			if k == 0 {
				pool = chunkPool(len(p))
			}
			b.chunks = append(b.chunks, replayChunk{b: pool.Get().(*[]byte)})
		}
		last := &b.chunks[len(b.chunks)-1]
		k := copy((*last.b)[last.len:], p)
		last.len += int32(k)
		p = p[k:]
	}
}

// appendOwned adds (*bp)[:n] without a copy: bp is the buffer's now.
func (b *replayBuf) appendOwned(bp *[]byte, n int) {
	b.grow(0)
	b.chunks = append(b.chunks, replayChunk{b: bp, len: int32(n), owned: true})
	b.n += n
	b.mem += cap(*bp)
}

// grow makes room for a chunk: an empty buffer (its slice was let go)
// starts with room for the chunks of a write of n bytes, at least two and
// at most a 64 KiB write's. A request-response stream empties its buffer
// at every ack and starts it again with its next small write: two slots
// (48 bytes) instead of sixteen (384) each time.
func (b *replayBuf) grow(n int) {
	if b.chunks == nil {
		b.chunks = make([]replayChunk, 0, min(max(2, (n+resumeChunk-1)/resumeChunk), maxPiece/resumeChunk))
	}
}

// drop frees the first k bytes and returns the charge freed: a copied
// chunk's bytes as they go, an owned buffer's capacity once all of it
// went.
func (b *replayBuf) drop(k int) int {
	freed, gone := 0, 0
	b.n -= k
	for gone < len(b.chunks) {
		c := &b.chunks[gone]
		left := int(c.len) - b.off
		if k < left {
			b.off += k
			if !c.owned {
				freed += k
			}
			break
		}
		k -= left
		if c.owned {
			freed += cap(*c.b)
			relayBufs.Put(c.b)
		} else {
			freed += left
			chunkPool(len(*c.b)).Put(c.b)
		}
		gone++
		b.off = 0
	}
	b.mem -= freed
	switch {
	case gone == len(b.chunks): // empty: an idle stream holds no slice
		b.chunks, b.off = nil, 0
	case gone > 0: // keep the slice's start, so that appends do not grow it anew
		n := copy(b.chunks, b.chunks[gone:])
		clear(b.chunks[n:])
		b.chunks = b.chunks[:n]
	}
	return freed
}

// slices returns the held bytes in order, referencing the chunks.
func (b *replayBuf) slices() [][]byte {
	out := make([][]byte, 0, len(b.chunks))
	off := b.off
	for _, c := range b.chunks {
		out = append(out, (*c.b)[off:int(c.len)])
		off = 0
	}
	return out
}

// ResumeBudget bounds the replay memory of many Resumables: one for the
// gateway and one per key under it (Child). A nil budget bounds nothing.
//
// Every write of every stream takes from it, so taking is lock-free:
// each level's use is an atomic count, added to on the way up and taken
// back if a level lacks room. Only a writer that must wait locks the
// root (all streams of a gateway share it), and a release locks it only
// while one waits.
type ResumeBudget struct {
	root   *budgetRoot
	parent *ResumeBudget
	limit  int64
	used   atomic.Int64
}

type budgetRoot struct {
	mu      sync.Mutex
	cond    sync.Cond
	waiters atomic.Int32 // acquires waiting on cond; changed under mu
}

// NewResumeBudget returns a budget of limit bytes.
func NewResumeBudget(limit int) *ResumeBudget {
	root := &budgetRoot{}
	root.cond.L = &root.mu
	return &ResumeBudget{root: root, limit: int64(limit)}
}

// Child returns a budget of limit bytes whose use counts against b too.
func (b *ResumeBudget) Child(limit int) *ResumeBudget {
	return &ResumeBudget{root: b.root, parent: b, limit: int64(limit)}
}

// Used returns the bytes held under b.
func (b *ResumeBudget) Used() int {
	if b == nil {
		return 0
	}
	return int(b.used.Load())
}

// tryAcquire takes n bytes from b and its parents, or, if one of them
// lacks room, nothing (false). locked: the caller holds root.mu.
func (b *ResumeBudget) tryAcquire(n int64, locked bool) bool {
	for x := b; x != nil; x = x.parent {
		if x.used.Add(n) <= x.limit {
			continue
		}
		for y := b; ; y = y.parent { // take back what this call added
			y.used.Add(-n)
			if y == x {
				break
			}
		}
		// A waiting acquire may have tried while this one's bytes were
		// counted, and waits: it may fit now. Not when this is a waiter's
		// try: waiters try only under root.mu, one at a time, so none saw
		// these bytes (and waking them would have them wake this one in
		// turn, round and round while the budget stays full).
		if !locked {
			b.root.wakeWaiters()
		}
		return false
	}
	return true
}

// acquire waits until n bytes fit b and its parents, or stop says to
// give up (false).
func (b *ResumeBudget) acquire(n int, stop func() bool) bool {
	if b == nil || b.tryAcquire(int64(n), false) {
		return true
	}
	r := b.root
	r.mu.Lock()
	defer r.mu.Unlock()
	// Counted before the next try: a release that the try misses sees
	// the count, and its wake takes mu, which this holds until Wait.
	r.waiters.Add(1)
	defer r.waiters.Add(-1)
	for !b.tryAcquire(int64(n), true) {
		if stop() {
			return false
		}
		r.cond.Wait()
	}
	return true
}

func (b *ResumeBudget) release(n int) {
	if b == nil || n == 0 {
		return
	}
	for x := b; x != nil; x = x.parent {
		x.used.Add(-int64(n))
	}
	b.root.wakeWaiters()
}

// wakeWaiters wakes the acquires that wait, if any do.
func (r *budgetRoot) wakeWaiters() {
	if r.waiters.Load() == 0 {
		return
	}
	r.mu.Lock()
	r.cond.Broadcast()
	r.mu.Unlock()
}

// wake wakes every waiting acquire (a Resumable ended: its waiter's stop
// now says so).
func (b *ResumeBudget) wake() {
	if b == nil {
		return
	}
	b.root.mu.Lock()
	b.root.cond.Broadcast()
	b.root.mu.Unlock()
}
