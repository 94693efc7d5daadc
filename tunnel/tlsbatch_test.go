package tunnel

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
)

// recordConn records every Write.
type recordConn struct {
	net.Conn
	writes [][]byte
}

func (r *recordConn) Write(p []byte) (int, error) {
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
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
	rec := &recordConn{}
	bc := &batchConn{Conn: rec}
	fc := &frameConn{Conn: bc, raw: bc}
	for _, n := range []int{1, 100, maxRecordPayload - yamuxHeaderSize, maxRecordPayload, 64 << 10} {
		rec.writes = nil
		hdr := yamuxHeader(yamuxTypeData, uint32(n))
		body := bytes.Repeat([]byte{'b'}, n)
		if w, err := fc.Write(hdr); w != len(hdr) || err != nil {
			t.Fatalf("header write: %d, %v", w, err)
		}
		if len(rec.writes) != 0 {
			t.Fatalf("%d-byte frame: header written before its body", n)
		}
		if w, err := fc.Write(body); w != n || err != nil {
			t.Fatalf("body write: %d, %v", w, err)
		}
		if len(rec.writes) != 1 || !bytes.Equal(rec.writes[0], append(hdr, body...)) {
			t.Fatalf("%d-byte frame: %d writes, want one of header+body", n, len(rec.writes))
		}
	}
	for _, hdr := range [][]byte{yamuxHeader(1, 1<<20), yamuxHeader(yamuxTypeData, 0), yamuxHeader(2, 5)} {
		rec.writes = nil
		if _, err := fc.Write(hdr); err != nil {
			t.Fatal(err)
		}
		if len(rec.writes) != 1 || !bytes.Equal(rec.writes[0], hdr) {
			t.Fatalf("frame without body (type %d): %d writes, want it at once", hdr[1], len(rec.writes))
		}
	}
}

// TestBatchConn_KeepsOrder: a write from outside a batch (a TLS alert)
// while a batch is open goes behind the batch, not before it.
func TestBatchConn_KeepsOrder(t *testing.T) {
	rec := &recordConn{}
	bc := &batchConn{Conn: rec}
	bc.begin()
	_, _ = bc.Write([]byte("one"))
	_, _ = bc.Write([]byte("two"))
	if len(rec.writes) != 0 {
		t.Fatal("batch written before its end")
	}
	if err := bc.end(); err != nil {
		t.Fatal(err)
	}
	_, _ = bc.Write([]byte("alert"))
	if len(rec.writes) != 2 || string(rec.writes[0]) != "onetwo" || string(rec.writes[1]) != "alert" {
		t.Fatalf("writes %q, want [onetwo alert]", rec.writes)
	}
}
