package control

import (
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachetun/cachetun/tunnel"
)

// writeCounter counts what a Link writes: writes (each one a write on the
// control stream: a yamux or QUIC frame, a TLS record, a read at the
// peer) and frames.
type writeCounter struct{ writes, frames atomic.Int64 }

func (w *writeCounter) write(frames []byte) error {
	w.writes.Add(1)
	for len(frames) >= 5 {
		w.frames.Add(1)
		frames = frames[5+int(binary.BigEndian.Uint32(frames[1:])):]
	}
	// What a write costs: a yamux frame through TLS, a record, a
	// write(2), and as much at the peer.
	for t := time.Now(); time.Since(t) < 5*time.Microsecond; {
	}
	return nil
}

// BenchmarkLink_StreamEnd is a Link's work for one short resumable
// stream, many at a time as under a new connection per request (-c 50
// -k 0): attached, its reply acknowledged (batched), its Fin sent,
// removed. writes/op is what the control stream carries per stream.
func BenchmarkLink_StreamEnd(b *testing.B) {
	var wc writeCounter
	l := NewLink(wc.write)
	var ids atomic.Uint64
	b.ReportAllocs()
	b.SetParallelism(25) // 2 CPUs × 25: 50 streams at once
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := tunnel.NewResumable(tunnel.ResumableConfig{ID: ids.Add(1), Grace: time.Minute}, nopStream{}, l)
			l.Add(r)
			l.Ack(r, false)
			l.Fin(r.ID(), 14)
			l.Remove(r)
		}
	})
	l.Flush()
	b.ReportMetric(float64(wc.writes.Load())/float64(b.N), "writes/op")
	b.ReportMetric(float64(wc.frames.Load())/float64(b.N), "frames/op")
	l.DetachAll()
}
