package tunnel

import (
	"bytes"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"
)

// recordConn records every Write; delay makes each write slow.
type recordConn struct {
	net.Conn
	delay  time.Duration
	mu     sync.Mutex
	writes [][]byte
}

func (r *recordConn) Write(p []byte) (int, error) {
	time.Sleep(r.delay)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

func (r *recordConn) Close() error { return nil }

// count returns the number of writes recorded and not yet taken.
func (r *recordConn) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.writes)
}

// queued returns the bytes queued in b and not yet taken by a writer.
func (b *batchConn) queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.buf)
}

// take waits until want bytes were written and returns the writes.
func (r *recordConn) take(t *testing.T, want int) [][]byte {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		n := 0
		for _, w := range r.writes {
			n += len(w)
		}
		if n >= want {
			w := r.writes
			r.writes = nil
			r.mu.Unlock()
			return w
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d bytes written within 5s", n, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func yamuxHeader(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[4:8], 7) // stream id
	binary.BigEndian.PutUint32(h[8:12], length)
	return h
}

// TestFrameConn_OneWritePerFrame: a data frame's header and body reach the
// socket in one write, small or large; frames without a body go at once.
// (The TLS layer between the two is left out: frameConn writes straight
// into the batch.)
func TestFrameConn_OneWritePerFrame(t *testing.T) {
	VerifyNoLeaks(t)
	rec := &recordConn{}
	bc := &batchConn{Conn: rec}
	bc.startFlusher()
	defer bc.Close()
	fc := &frameConn{Conn: bc, raw: bc}
	for _, n := range []int{1, 100, maxRecordPayload - yamuxHeaderSize, maxRecordPayload, 64 << 10} {
		hdr := yamuxHeader(yamuxTypeData, uint32(n))
		body := bytes.Repeat([]byte{'b'}, n)
		if w, err := fc.Write(hdr); w != len(hdr) || err != nil {
			t.Fatalf("header write: %d, %v", w, err)
		}
		// The header is held in frameConn: nothing reached the batch, so
		// no flusher can write it alone.
		if !fc.held || rec.count() != 0 || bc.queued() != 0 {
			t.Fatalf("%d-byte frame: the header went on alone (held %v, %d writes, %d bytes queued)", n, fc.held, rec.count(), bc.queued())
		}
		if w, err := fc.Write(body); w != n || err != nil {
			t.Fatalf("body write: %d, %v", w, err)
		}
		if got := rec.take(t, len(hdr)+n); len(got) != 1 || !bytes.Equal(got[0], append(hdr, body...)) {
			t.Fatalf("%d-byte frame: %d writes, want one of header+body", n, len(got))
		}
	}
	for _, hdr := range [][]byte{yamuxHeader(1, 1<<20), yamuxHeader(yamuxTypeData, 0), yamuxHeader(2, 5)} {
		if _, err := fc.Write(hdr); err != nil {
			t.Fatal(err)
		}
		if got := rec.take(t, len(hdr)); len(got) != 1 || !bytes.Equal(got[0], hdr) {
			t.Fatalf("frame without body (type %d): %q, want it alone", hdr[1], got)
		}
	}
}

// TestBatchConn_KeepsOrder: bytes leave in the order they were written,
// and the records of one batch in one write.
func TestBatchConn_KeepsOrder(t *testing.T) {
	VerifyNoLeaks(t)
	rec := &recordConn{}
	bc := &batchConn{Conn: rec}
	if _, err := bc.Write([]byte("hello")); err != nil { // before the handshake: straight through
		t.Fatal(err)
	}
	if got := rec.take(t, 5); len(got) != 1 {
		t.Fatalf("handshake write: %q", got)
	}
	bc.startFlusher()
	bc.begin()
	_, _ = bc.Write([]byte("one"))
	// Inside a batch the bytes stay queued until end (the check below that
	// onetwo left in one write is what fails if they did not).
	if q := bc.queued(); q != len("one") || rec.count() != 0 {
		t.Fatalf("inside a batch: %d bytes queued, %d writes; want 3 queued, none written", q, rec.count())
	}
	_, _ = bc.Write([]byte("two"))
	if err := bc.end(); err != nil {
		t.Fatal(err)
	}
	_, _ = bc.Write([]byte("alert"))
	got := rec.take(t, len("onetwoalert"))
	if string(bytes.Join(got, nil)) != "onetwoalert" || !bytes.HasPrefix(got[0], []byte("onetwo")) {
		t.Fatalf("writes %q, want onetwo in one write, then alert", got)
	}
	if err := bc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := bc.Write([]byte("late")); err == nil {
		t.Fatal("write after Close succeeded")
	}
}

// TestBatchConn_GroupCommit: batches that come faster than the socket
// takes them switch to group commit and share writes, in order; a
// session that goes back to one batch at a time returns to inline writes.
func TestBatchConn_GroupCommit(t *testing.T) {
	VerifyNoLeaks(t)
	rec := &recordConn{delay: 2 * time.Millisecond}
	bc := &batchConn{Conn: rec}
	bc.startFlusher()
	defer bc.Close()
	var want []byte
	for i := range 50 {
		msg := []byte{byte('a' + i%26)}
		want = append(want, msg...)
		bc.begin()
		if _, err := bc.Write(msg); err != nil {
			t.Fatal(err)
		}
		if err := bc.end(); err != nil {
			t.Fatal(err)
		}
	}
	got := rec.take(t, len(want))
	if !bytes.Equal(bytes.Join(got, nil), want) {
		t.Fatalf("bytes out of order: %q", bytes.Join(got, nil))
	}
	if len(got) >= 25 {
		t.Fatalf("%d writes for 50 back-to-back batches, want them grouped", len(got))
	}
	bc.mu.Lock()
	group := bc.group
	bc.mu.Unlock()
	if !group {
		t.Fatal("back-to-back batches did not switch to group commit")
	}
	// Slow traffic: after singleFlushes lone batches it is inline again.
	rec.delay = 0
	for range singleFlushes + 2 {
		bc.begin()
		_, _ = bc.Write([]byte("x"))
		_ = bc.end()
		rec.take(t, 1)
		time.Sleep(time.Millisecond) // slow traffic: the next batch starts long after backlogGap
	}
	bc.mu.Lock()
	group = bc.group
	bc.mu.Unlock()
	if group {
		t.Fatal("lone batches did not switch back to inline writes")
	}
}
