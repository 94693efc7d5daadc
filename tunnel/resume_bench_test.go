package tunnel_test

// Benchmarks of what resumption costs on top of a plain stream: per
// stream (BenchmarkResumable_OpenClose against BenchmarkOpenStream) and
// per byte (BenchmarkResumable_Bulk: a Resumable alone, on a stream that
// discards, and BenchmarkResumable_BulkPair through a transport).
//
//	go test -run '^$' -bench 'Resumable|OpenStream' -benchmem -count 6 ./tunnel/

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachetun/cachetun/tunnel"
)

// linkPair joins two Resumables, each end's acks, Fins and Resets handed
// to the other at once in the caller's goroutine: the cheapest link there
// is, so that a benchmark measures the Resumable's own cost (package
// control has the real link and its benchmark).
type linkPair struct {
	mu   sync.Mutex
	c, s *tunnel.Resumable
}

// end is one side's ResumeLink: toServer links the client's Resumable.
type pairEnd struct {
	p        *linkPair
	toServer bool
}

func (e pairEnd) peer() *tunnel.Resumable {
	e.p.mu.Lock()
	defer e.p.mu.Unlock()
	if e.toServer {
		return e.p.s
	}
	return e.p.c
}

func (e pairEnd) Ack(r *tunnel.Resumable, _ bool) {
	if p := e.peer(); p != nil {
		_, n := r.TakeAck()
		_ = p.Acked(n)
	}
}

func (e pairEnd) Fin(_, offset uint64) {
	if p := e.peer(); p != nil {
		p.PeerFin(offset)
	}
}

func (e pairEnd) Reset(uint64) {
	if p := e.peer(); p != nil {
		p.PeerReset()
	}
}

// BenchmarkResumable_OpenClose is BenchmarkOpenStream with a Resumable at
// each end, as the client and the gateway run one: open, a request
// behind the header, the reply, both Fins, a clean close at both ends.
// The gateway's Resumables share a budget, as under one key.
func BenchmarkResumable_OpenClose(b *testing.B) {
	for _, tr := range allTransports {
		b.Run(tr, func(b *testing.B) {
			budget := tunnel.NewResumeBudget(64 << 20).Child(16 << 20)
			pairs := make(chan *linkPair, 1)
			client, ctx := serveStreams(b, tr, func(req tunnel.OpenRequest, st tunnel.Stream) {
				lp := <-pairs
				sr := tunnel.NewResumable(tunnel.ResumableConfig{ID: req.ID, Token: req.Token, Budget: budget, Grace: time.Minute}, st, pairEnd{lp, false})
				lp.mu.Lock()
				lp.s = sr
				lp.mu.Unlock()
				defer sr.Close()
				buf := make([]byte, 64)
				n, err := sr.Read(buf)
				if err != nil {
					return
				}
				_, _ = sr.Write(buf[:n])
				_ = sr.CloseWrite()
				_, _ = sr.Read(buf) // io.EOF: the client's Fin
			})
			msg := []byte("*1\r\n$4\r\nPING\r\n")
			reply := make([]byte, len(msg))
			var id uint64
			b.ReportAllocs()
			sc, ops := startSyscalls(), 0
			for b.Loop() {
				id++
				st, err := client.OpenStream(ctx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "bench",
					Node: "10.0.0.1:6379", Resumable: true, ID: id})
				if err != nil {
					b.Fatal(err)
				}
				lp := &linkPair{}
				cr := tunnel.NewResumable(tunnel.ResumableConfig{ID: id, Grace: time.Minute}, st, pairEnd{lp, true})
				lp.c = cr
				pairs <- lp
				if _, err := cr.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(cr, reply); err != nil {
					b.Fatal(err)
				}
				_ = cr.CloseWrite()
				if _, err := cr.Read(reply); err != io.EOF {
					b.Fatalf("read after the reply: %v, want io.EOF", err)
				}
				_ = cr.Close()
				ops++
			}
			sc.report(b, ops)
		})
	}
}

// discardStream is a Stream that takes every write, calling ack (when
// set) with the total so far, and reads nothing until aborted or closed:
// what a Resumable writes to, with no transport under it.
type discardStream struct {
	n    atomic.Int64
	ack  func(total int64)
	once sync.Once
	done chan struct{}
}

func newDiscardStream() *discardStream { return &discardStream{done: make(chan struct{})} }

func (d *discardStream) Write(p []byte) (int, error) {
	n := d.n.Add(int64(len(p)))
	if d.ack != nil {
		d.ack(n)
	}
	return len(p), nil
}
func (d *discardStream) Read([]byte) (int, error)       { <-d.done; return 0, io.EOF }
func (d *discardStream) WaitReadable() error            { <-d.done; return io.EOF }
func (d *discardStream) Close() error                   { d.Abort(); return nil }
func (*discardStream) CloseWrite() error                { return nil }
func (d *discardStream) Abort()                         { d.once.Do(func() { close(d.done) }) }
func (*discardStream) SetDeadline(time.Time) error      { return nil }
func (*discardStream) SetReadDeadline(time.Time) error  { return nil }
func (*discardStream) SetWriteDeadline(time.Time) error { return nil }
func (*discardStream) FlushOpen() error                 { return nil }

// nopLink is a ResumeLink that sends nothing.
type nopLink struct{}

func (nopLink) Ack(*tunnel.Resumable, bool) {}
func (nopLink) Fin(uint64, uint64)          {}
func (nopLink) Reset(uint64)                {}

// BenchmarkResumable_Bulk: the per-byte cost of a Resumable alone. Each
// op writes 1 MiB in the relay's 64 KiB pieces to a stream that discards
// it, and the peer acknowledges every 512 KiB (AckUrgent), so the replay
// buffer (4 MiB, under a shared budget) never fills.
func BenchmarkResumable_Bulk(b *testing.B) {
	const piece, perOp = 64 << 10, 1 << 20
	budget := tunnel.NewResumeBudget(64 << 20).Child(16 << 20)
	d := newDiscardStream()
	r := tunnel.NewResumable(tunnel.ResumableConfig{ID: 1, Budget: budget, Grace: time.Minute}, d, nopLink{})
	defer r.Fail(errors.New("done"))
	buf := make([]byte, piece)
	b.SetBytes(perOp)
	b.ReportAllocs()
	var sent uint64
	for b.Loop() {
		for range perOp / piece {
			if _, err := r.Write(buf); err != nil {
				b.Fatal(err)
			}
			sent += piece
			if sent%tunnel.AckUrgent == 0 {
				if err := r.Acked(sent); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	if d.n.Load() != int64(sent) {
		b.Fatalf("the stream got %d bytes, want %d", d.n.Load(), sent)
	}
}

// BenchmarkResumable_BulkParallel is BenchmarkResumable_Bulk on many
// streams at once under one budget, as a gateway's streams of one key.
func BenchmarkResumable_BulkParallel(b *testing.B) {
	const piece = 64 << 10
	budget := tunnel.NewResumeBudget(1 << 30).Child(512 << 20)
	b.SetBytes(piece)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := tunnel.NewResumable(tunnel.ResumableConfig{ID: 1, Budget: budget, Grace: time.Minute}, newDiscardStream(), nopLink{})
		defer r.Fail(errors.New("done"))
		buf := make([]byte, piece)
		var sent uint64
		for pb.Next() {
			if _, err := r.Write(buf); err != nil {
				b.Error(err)
				return
			}
			sent += piece
			if sent%tunnel.AckUrgent == 0 {
				_ = r.Acked(sent)
			}
		}
	})
}

// BenchmarkResumable_RelayUp: the per-byte cost of a Resumable under the
// relay, as bulk data from a local connection (or an upstream one, at the
// gateway) enters it: 1 MiB per op written to a TCP socket, relayed into
// a Resumable over a stream that discards and acknowledges every 512 KiB.
// copy: every read copied into the replay buffer; owned: the relay hands
// its buffer over (the default).
func BenchmarkResumable_RelayUp(b *testing.B) {
	for _, mode := range []string{"copy", "owned"} {
		b.Run(mode, func(b *testing.B) {
			defer tunnel.SetOwnedWrites(mode == "owned")()
			const perOp = 1 << 20
			app, conn := tunnel.TCPPair(b)
			d := newDiscardStream()
			budget := tunnel.NewResumeBudget(64 << 20).Child(16 << 20)
			r := tunnel.NewResumable(tunnel.ResumableConfig{ID: 1, Budget: budget, Grace: time.Minute}, d, nopLink{})
			var acked int64
			d.ack = func(n int64) {
				if n-acked >= tunnel.AckUrgent {
					acked = n
					_ = r.Acked(uint64(n))
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan tunnel.RelayResult, 1)
			go func() { done <- tunnel.Relay(ctx, conn, r, nil) }()
			buf := make([]byte, perOp)
			b.SetBytes(perOp)
			b.ReportAllocs()
			sc, ops := startSyscalls(), 0
			for b.Loop() {
				if _, err := app.Write(buf); err != nil {
					b.Fatal(err)
				}
				ops++
			}
			_ = app.CloseWrite()
			want := int64(ops * perOp)
			deadline := time.Now().Add(10 * time.Second)
			for d.n.Load() < want && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			sc.report(b, ops)
			cancel()
			<-done
			app.Close()
			if got := d.n.Load(); got != want {
				b.Fatalf("the stream got %d bytes, want %d", got, want)
			}
		})
	}
}

// echoStream is a Stream whose every Read returns one fixed message at
// once and whose writes vanish: a peer that always has the reply ready,
// so that a benchmark of small requests measures the layers above it.
type echoStream struct {
	*discardStream
	msg []byte
}

func (e *echoStream) Read(p []byte) (int, error) { return copy(p, e.msg), nil }
func (*echoStream) WaitReadable() error          { return nil }

// BenchmarkResumable_Request: the per-request cost of a Resumable at one
// end, as under redis-benchmark -c 50: each op writes a 14-byte request,
// waits for the stream to be readable and reads the reply, on many
// streams at once under one budget (the gateway's streams of one key);
// the peer acknowledges what it got every 16 requests. plain is the same
// on the bare stream.
func BenchmarkResumable_Request(b *testing.B) {
	msg := []byte("*1\r\n$4\r\nPING\r\n")
	for _, mode := range []string{"plain", "resumable"} {
		b.Run(mode, func(b *testing.B) {
			budget := tunnel.NewResumeBudget(1 << 30).Child(512 << 20)
			b.ReportAllocs()
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				es := &echoStream{discardStream: newDiscardStream(), msg: msg}
				var st tunnel.Stream = es
				var r *tunnel.Resumable
				if mode == "resumable" {
					r = tunnel.NewResumable(tunnel.ResumableConfig{ID: 1, Budget: budget, Grace: time.Minute}, es, nopLink{})
					defer r.Fail(errors.New("done"))
					st = r
				}
				buf := make([]byte, 512)
				var sent uint64
				for i := 0; pb.Next(); i++ {
					if _, err := st.Write(msg); err != nil {
						b.Error(err)
						return
					}
					sent += uint64(len(msg))
					if err := st.WaitReadable(); err != nil {
						b.Error(err)
						return
					}
					if _, err := st.Read(buf); err != nil {
						b.Error(err)
						return
					}
					if r != nil && i%16 == 15 {
						_ = r.Acked(sent)
					}
				}
			})
		})
	}
}
