package tunnel

import (
	"bufio"
	"encoding/binary"
	"net"
	"sync"
	"time"
)

// Write coalescing for TLS+yamux. yamux's send loop writes every data
// frame as two Writes, the 12-byte header and then the body, and crypto/tls
// turns every Write into at least one record and every record into one
// write(2). A small request thus cost two TLS records and two syscalls, and
// a 32 KiB chunk four; and with many streams busy, every frame of every
// stream was a syscall of its own. Two thin layers fix that without
// touching yamux:
//
//	yamux ─► frameConn ─► tls.Conn ─► batchConn ─► TCP
//
// frameConn holds a data frame's header back until its body arrives and
// hands both to TLS together, as one batch; batchConn writes a batch with
// one write(2), in one of two modes:
//
//   - inline: the send loop writes itself. One frame at a time is in
//     flight, the cheapest and fastest when frames come one by one (a
//     single client: a hand-off to another goroutine costs a thread wake-up
//     per frame; BENCHMARKS.md, "What changed", change 3, has the figures).
//   - group commit: a flusher goroutine writes, and everything queued while
//     it was inside write(2) goes out in its next one. The send loop never
//     blocks on the socket, and busy sessions share syscalls.
//
// A frame that is due within backlogGap of the previous write's end means
// frames are queueing up behind the send loop: batchConn switches to group
// commit, and back to inline after flushes that carried one frame each.

// yamux frame header layout (hashicorp/yamux const.go).
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

// maxPending bounds the bytes queued for the flusher; writers wait beyond.
// A batch holds the flusher back only below it: a frame that does not fit
// is split rather than blocking forever.
const maxPending = 256 << 10

// keepIdle is the largest buffer kept once a session has been quiet for a
// second: a session that moved bulk data does not hold on to its peak.
const keepIdle = 64 << 10

// readBufSize is the read buffer under TLS: crypto/tls reads at most about
// one record per read(2); buffered, one read(2) serves several records.
const readBufSize = 64 << 10

// Mode switching: a batch that starts within backlogGap of the end of the
// previous inline write switches to group commit; singleFlushes flushes in
// a row of one batch each switch back.
const (
	backlogGap    = 20 * time.Microsecond
	singleFlushes = 32
)

// batchConn sits under tls.Conn. Reads go through a buffer (only the TLS
// layer reads, one record at a time). Until startFlusher (the TLS
// handshake) writes go straight through. After it, bytes are queued in
// order and written by whoever holds the writer role: the caller of end
// (inline mode) or the flusher (group commit).
type batchConn struct {
	net.Conn

	mu       sync.Mutex // guards the following
	cond     sync.Cond  // signalled when queued bytes were taken or failed
	started  bool
	group    bool // group commit, else inline
	batching bool
	writing  bool // someone is in write(2) with taken bytes
	closed   bool
	err      error  // the first write error, returned by later writes
	buf      []byte // queued bytes
	spare    []byte // the last written buffer, reused
	batches  int    // batches queued since the flusher last took buf
	singles  int    // flushes in a row that carried one batch
	lastEnd  time.Time
	wake     chan struct{}
	done     chan struct{} // closed when the flusher exits

	rd *bufio.Reader // used by the TLS reader only
}

func (b *batchConn) Read(p []byte) (int, error) {
	if b.rd == nil {
		b.rd = bufio.NewReaderSize(b.Conn, readBufSize)
	}
	return b.rd.Read(p)
}

// startFlusher switches to queued writes (call it after the handshake).
func (b *batchConn) startFlusher() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cond.L = &b.mu
	b.started = true
	b.wake = make(chan struct{}, 1)
	b.done = make(chan struct{})
	go b.flusher()
}

// Write queues p; outside a batch it is a batch of its own.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	if !b.started {
		b.mu.Unlock()
		return b.Conn.Write(p)
	}
	for len(b.buf) >= maxPending && b.err == nil && !b.closed {
		if b.group {
			b.signal()
		} else if !b.writing {
			b.writeLocked() // a batch larger than maxPending, inline
			continue
		}
		b.cond.Wait()
	}
	if err := b.failedLocked(); err != nil {
		b.mu.Unlock()
		return 0, err
	}
	b.buf = append(b.buf, p...)
	if b.batching {
		b.mu.Unlock()
		return len(p), nil
	}
	b.batches++
	err := b.commitLocked()
	b.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (b *batchConn) failedLocked() error {
	if b.err != nil {
		return b.err
	}
	if b.closed {
		return net.ErrClosed
	}
	return nil
}

func (b *batchConn) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// begin opens a batch: the bytes written until end leave together.
func (b *batchConn) begin() {
	b.mu.Lock()
	b.batching = true
	if b.started && !b.group && !b.lastEnd.IsZero() && time.Since(b.lastEnd) < backlogGap {
		b.group = true // frames are queueing behind the send loop
		b.singles = 0
	}
	b.mu.Unlock()
}

// end closes the batch and writes it (inline) or hands it to the flusher.
func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	if !b.started {
		return nil
	}
	b.batches++
	return b.commitLocked()
}

// commitLocked gets the queued bytes written.
func (b *batchConn) commitLocked() error {
	if err := b.failedLocked(); err != nil {
		return err
	}
	if b.group || b.writing {
		b.signal() // the flusher (or the writer in write(2) now) takes it
		return nil
	}
	b.writeLocked()
	return b.err
}

// writeLocked writes everything queued, in the caller; b.mu is released
// during write(2).
func (b *batchConn) writeLocked() {
	b.writing = true
	for len(b.buf) > 0 && b.err == nil {
		out := b.buf
		b.buf = b.spare[:0]
		b.spare = nil
		b.batches = 0
		b.cond.Broadcast()
		b.mu.Unlock()
		_, err := b.Conn.Write(out)
		b.mu.Lock()
		b.doneWritingLocked(out, err)
	}
	b.writing = false
	b.lastEnd = time.Now()
	b.cond.Broadcast()
	if b.closed {
		b.signal() // Close waits for the flusher, which waits for us
	}
}

func (b *batchConn) doneWritingLocked(out []byte, err error) {
	if cap(out) <= 2*maxPending {
		b.spare = out[:0]
	}
	if err != nil && b.err == nil {
		b.err = err
		_ = b.Conn.Close() // readers learn at once; writers get err
	}
}

func (b *batchConn) flusher() {
	defer close(b.done)
	idle := time.NewTimer(time.Hour)
	idle.Stop()
	defer idle.Stop()
	for {
		b.mu.Lock()
		// Write whatever is queued while nobody else is writing and no
		// batch is open: in group commit that is every batch; in inline
		// mode only bytes left behind when the mode changed.
		for len(b.buf) == 0 || b.writing || b.batching && !b.closed && len(b.buf) < maxPending {
			if b.closed && !b.writing && len(b.buf) == 0 || b.err != nil {
				b.mu.Unlock()
				return
			}
			big := cap(b.spare) > keepIdle
			b.mu.Unlock()
			if !big {
				<-b.wake
			} else {
				// Keep a large buffer while bytes keep coming; drop it
				// once the session has been quiet for a second.
				idle.Reset(time.Second)
				select {
				case <-b.wake:
				case <-idle.C:
					b.mu.Lock()
					b.spare = nil
					b.mu.Unlock()
				}
				idle.Stop()
			}
			b.mu.Lock()
		}
		if b.batches <= 1 {
			if b.singles++; b.singles >= singleFlushes {
				b.group = false // frames come one by one again: inline
			}
		} else {
			b.singles = 0
		}
		b.writing = true
		out := b.buf
		b.buf = b.spare[:0]
		b.spare = nil
		b.batches = 0
		b.cond.Broadcast()
		b.mu.Unlock()

		_, err := b.Conn.Write(out)

		b.mu.Lock()
		b.doneWritingLocked(out, err)
		b.writing = false
		b.cond.Broadcast()
		failed := b.err != nil
		b.mu.Unlock()
		if failed {
			return
		}
	}
}

// Close writes what is queued (bounded by the write deadline crypto/tls
// sets for its close_notify), then closes the connection.
func (b *batchConn) Close() error {
	b.mu.Lock()
	started := b.started && !b.closed
	b.closed = true
	b.batching = false
	b.cond.Broadcast()
	b.mu.Unlock()
	if started {
		b.signal()
		<-b.done
	}
	return b.Conn.Close()
}

// frameConn is what yamux writes to: a data frame's header waits for its
// body, and both go out in one batch. Only yamux's send loop writes to it,
// one frame after the other, so the held header needs no lock.
type frameConn struct {
	net.Conn // the tls.Conn
	raw      *batchConn

	held    bool
	hdr     [yamuxHeaderSize]byte
	bodyLen uint32
	scratch []byte
}

func (f *frameConn) Write(p []byte) (int, error) {
	if f.held {
		f.held = false
		f.raw.begin()
		var err error
		if uint32(len(p)) == f.bodyLen && len(p) <= maxRecordPayload-yamuxHeaderSize {
			f.scratch = append(append(f.scratch[:0], f.hdr[:]...), p...)
			_, err = f.Conn.Write(f.scratch)
		} else if _, err = f.Conn.Write(f.hdr[:]); err == nil {
			_, err = f.Conn.Write(p)
		}
		if ferr := f.raw.end(); err == nil {
			err = ferr
		}
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if len(p) == yamuxHeaderSize && p[1] == yamuxTypeData {
		if n := binary.BigEndian.Uint32(p[8:12]); n > 0 {
			copy(f.hdr[:], p)
			f.bodyLen = n
			f.held = true
			return len(p), nil
		}
	}
	return f.Conn.Write(p)
}

// maxRecordPayload is the plaintext of one full TLS record.
const maxRecordPayload = 16 << 10
