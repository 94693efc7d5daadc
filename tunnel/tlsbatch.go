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
// hands both to TLS together; batchConn collects the records and a flusher
// goroutine writes them to the socket: at once when it is idle, and, while
// it is inside write(2), everything that queued meanwhile in the next one
// (group commit: no timer, no added latency, fewer syscalls under load).

// yamux frame header layout (hashicorp/yamux const.go).
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

// maxPending bounds the bytes queued for the flusher; writers wait beyond.
const maxPending = 256 << 10

// keepIdle is the largest buffer kept once a session has been quiet for a
// second: a session that moved bulk data does not hold on to its peak.
const keepIdle = 64 << 10

// readBufSize is the read buffer under TLS: crypto/tls reads at most about
// one record per read(2); buffered, one read(2) serves several records.
const readBufSize = 64 << 10

// batchConn sits under tls.Conn. Reads go through a buffer (only the TLS
// layer reads, one record at a time). Until startFlusher (the TLS handshake)
// writes go straight through; then they queue for the flusher, in order.
// Between begin and end the flusher is not woken, so the records of one
// frame leave in one write.
type batchConn struct {
	net.Conn

	mu       sync.Mutex // guards the following
	cond     sync.Cond  // signalled when the flusher took or wrote bytes
	async    bool
	batching bool
	closed   bool
	err      error  // the flusher's write error, returned by later writes
	buf      []byte // queued bytes
	spare    []byte // the flusher's last buffer, reused
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

// A batch holds the flusher back only while the queue is below maxPending:
// a frame that does not fit is split rather than blocking forever.

// startFlusher switches to queued writes (call it after the handshake).
func (b *batchConn) startFlusher() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cond.L = &b.mu
	b.async = true
	b.wake = make(chan struct{}, 1)
	b.done = make(chan struct{})
	go b.flusher()
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	if !b.async {
		b.mu.Unlock()
		return b.Conn.Write(p)
	}
	for len(b.buf) >= maxPending && b.err == nil && !b.closed {
		b.signal() // a full queue is written even inside a batch
		b.cond.Wait()
	}
	if b.err != nil || b.closed {
		err := b.err
		b.mu.Unlock()
		if err == nil {
			err = net.ErrClosed
		}
		return 0, err
	}
	b.buf = append(b.buf, p...)
	batching := b.batching
	b.mu.Unlock()
	if !batching {
		b.signal()
	}
	return len(p), nil
}

func (b *batchConn) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// begin holds the flusher back until end, so that the records written in
// between leave together.
func (b *batchConn) begin() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

// end lets the flusher write what begin held back; it returns an earlier
// write error, if any.
func (b *batchConn) end() error {
	b.mu.Lock()
	b.batching = false
	err := b.err
	async := b.async
	b.mu.Unlock()
	if async {
		b.signal()
	}
	return err
}

func (b *batchConn) flusher() {
	defer close(b.done)
	idle := time.NewTimer(time.Hour)
	idle.Stop()
	defer idle.Stop()
	for {
		b.mu.Lock()
		for len(b.buf) == 0 || b.batching && !b.closed && len(b.buf) < maxPending {
			if b.closed || b.err != nil {
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
		out := b.buf
		b.buf = b.spare[:0]
		b.spare = nil
		b.cond.Broadcast()
		b.mu.Unlock()

		_, err := b.Conn.Write(out)

		b.mu.Lock()
		if cap(out) <= 2*maxPending {
			b.spare = out[:0]
		}
		if err != nil && b.err == nil {
			b.err = err
			b.cond.Broadcast()
		}
		b.mu.Unlock()
		if err != nil {
			_ = b.Conn.Close() // readers learn at once; writers get err
			return
		}
	}
}

// Close writes what is queued (bounded by the write deadline crypto/tls
// sets for its close_notify), then closes the connection.
func (b *batchConn) Close() error {
	b.mu.Lock()
	async := b.async && !b.closed
	b.closed = true
	b.batching = false
	b.cond.Broadcast()
	b.mu.Unlock()
	if async {
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
