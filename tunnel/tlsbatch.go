package tunnel

import (
	"encoding/binary"
	"net"
	"sync"
)

// Write coalescing for TLS+yamux. yamux's send loop writes every data
// frame as two Writes, the 12-byte header and then the body, and crypto/tls
// turns every Write into at least one record and every record into one
// write(2). A small request thus cost two TLS records and two syscalls, and
// a 32 KiB chunk four. Two thin layers fix that without touching yamux:
//
//	yamux ─► frameConn ─► tls.Conn ─► batchConn ─► TCP
//
// frameConn holds a data frame's header back until its body arrives and
// hands both to TLS together, inside a batch; batchConn collects the
// records of that batch and writes them to the socket at once. Every yamux
// frame is then exactly one write(2); small frames are one record.

// yamux frame header layout (hashicorp/yamux const.go).
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
)

// batchFlushAt bounds what a batch holds before it is written anyway.
const batchFlushAt = 256 << 10

// batchConn sits under tls.Conn and writes the records of one batch with
// one write(2). Outside a batch (handshake, alerts) writes go straight
// through; a write from another goroutine during a batch (a close_notify
// alert) queues behind the batch, so the record order is kept.
type batchConn struct {
	net.Conn

	mu       sync.Mutex // guards the following; held while writing to Conn
	batching bool
	buf      []byte
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.batching {
		b.buf = append(b.buf, p...)
		if len(b.buf) >= batchFlushAt {
			if err := b.flushLocked(); err != nil {
				return 0, err
			}
		}
		return len(p), nil
	}
	if err := b.flushLocked(); err != nil {
		return 0, err
	}
	return b.Conn.Write(p)
}

func (b *batchConn) begin() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

// end closes the batch and writes it.
func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	return b.flushLocked()
}

func (b *batchConn) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	if cap(b.buf) > 2*batchFlushAt {
		b.buf = nil // a rare huge batch: do not keep its memory
	} else {
		b.buf = b.buf[:0]
	}
	return err
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
