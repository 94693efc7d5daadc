package tunnel_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachetun/cachetun/tunnel"
)

// testLink stands in for the control stream of one session (package
// control carries the real frames): it hands acks, Fins and Resets to
// the peer's Resumable in its own goroutine, until the session is cut.
type testLink struct {
	peer  *atomic.Pointer[tunnel.Resumable]
	mu    sync.Mutex // guards dead and wg's additions
	dead  atomic.Bool
	wg    sync.WaitGroup
	noAck bool
}

// do runs f in its own goroutine unless the link was cut.
func (l *testLink) do(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.dead.Load() {
		l.wg.Go(f)
	}
}

func newTestLink(peer *atomic.Pointer[tunnel.Resumable]) *testLink { return &testLink{peer: peer} }

func (l *testLink) Ack(r *tunnel.Resumable, urgent bool) {
	if l.noAck {
		return
	}
	l.do(func() {
		if !urgent {
			time.Sleep(tunnel.AckDelay) // the batching delay of a real link
		}
		if l.dead.Load() {
			return
		}
		_, n := r.TakeAck()
		if p := l.peer.Load(); p != nil {
			_ = p.Acked(n)
		}
	})
}

func (l *testLink) Fin(_, offset uint64) {
	l.do(func() {
		if p := l.peer.Load(); p != nil && !l.dead.Load() {
			p.PeerFin(offset)
		}
	})
}

func (l *testLink) Reset(uint64) {
	l.do(func() {
		if p := l.peer.Load(); p != nil && !l.dead.Load() {
			p.PeerReset()
		}
	})
}

func (l *testLink) cut() {
	l.mu.Lock()
	l.dead.Store(true)
	l.mu.Unlock()
	l.wg.Wait()
}

// pseudo returns n pseudo-random bytes of seed.
func pseudo(seed uint64, n int) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	_, _ = rng.Read(b)
	return b
}

// writeAll writes data in pseudo-random pieces, then half-closes.
func writeAll(w *tunnel.Resumable, data []byte, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 1))
	for len(data) > 0 {
		k := min(len(data), 1+rng.IntN(100<<10))
		if _, err := w.Write(data[:k]); err != nil {
			return err
		}
		data = data[k:]
	}
	return w.CloseWrite()
}

// readAll reads until io.EOF, noting progress in got.
func readAll(r *tunnel.Resumable, got *atomic.Int64) ([]byte, error) {
	var out bytes.Buffer
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		out.Write(buf[:n])
		got.Add(int64(n))
		if err == io.EOF {
			return out.Bytes(), nil
		}
		if err != nil {
			return out.Bytes(), err
		}
	}
}

// TestResumable_SurvivesSessionDeath moves a stream carrying 8 MiB of
// pseudo-random bytes each way from one session to another, the first one
// closed mid-transfer, and checks that each side read exactly what the
// other wrote: nothing lost, duplicated or reordered. The replay buffer
// is 1 MiB, so the writers block on it while the stream is detached.
func TestResumable_SurvivesSessionDeath(t *testing.T) {
	const size = 8 << 20
	forEachTransport(t, func(t *testing.T, p pair) {
		cst, sst := streamPair(t, p)
		var cPeer, sPeer atomic.Pointer[tunnel.Resumable] // each link's peer
		clink, slink := newTestLink(&cPeer), newTestLink(&sPeer)
		cfg := tunnel.ResumableConfig{ID: 7, Buffer: 1 << 20, Grace: 30 * time.Second}
		cr := tunnel.NewResumable(cfg, cst, clink)
		sr := tunnel.NewResumable(cfg, sst, slink)
		cPeer.Store(sr)
		sPeer.Store(cr)
		up, down := pseudo(1, size), pseudo(2, size)

		var cGot, sGot atomic.Int64
		type result struct {
			b   []byte
			err error
		}
		cRead, sRead := make(chan result, 1), make(chan result, 1)
		wErr := make(chan error, 2)
		go func() { b, err := readAll(cr, &cGot); cRead <- result{b, err} }()
		go func() { b, err := readAll(sr, &sGot); sRead <- result{b, err} }()
		go func() { wErr <- writeAll(cr, up, 3) }()
		go func() { wErr <- writeAll(sr, down, 4) }()

		waitFor(t, 20*time.Second, "2 MiB each way on the first session", func() bool {
			return cGot.Load() >= 2<<20 && sGot.Load() >= 2<<20
		})
		p.client.Close()
		p.server.Close()
		clink.cut()
		slink.cut()
		cr.Detach()
		sr.Detach()
		if !cr.Detached() || !sr.Detached() {
			t.Fatal("streams not detached after the session closed")
		}
		if got := cr.Buffered(); got > 1<<20 {
			t.Fatalf("client replay buffer holds %d bytes, bound 1 MiB", got)
		}

		p2 := newPair(t, p.transport)
		cst2, sst2 := streamPair(t, p2)
		clink2, slink2 := newTestLink(&cPeer), newTestLink(&sPeer)
		cRecv, sRecv := cr.Recv(), sr.Recv() // what each resume handshake carries
		if err := sr.Attach(sst2, cRecv, slink2); err != nil {
			t.Fatalf("server Attach: %v", err)
		}
		if err := cr.Attach(cst2, sRecv, clink2); err != nil {
			t.Fatalf("client Attach: %v", err)
		}
		c := within(t, cRead, 60*time.Second, "client read to the end")
		s := within(t, sRead, 60*time.Second, "server read to the end")
		for i := 0; i < 2; i++ {
			if err := within(t, wErr, 10*time.Second, "writers done"); err != nil {
				t.Fatalf("write: %v", err)
			}
		}
		if c.err != nil || s.err != nil {
			t.Fatalf("read errors: client %v, server %v", c.err, s.err)
		}
		if len(c.b) != size || !bytes.Equal(c.b, down) {
			t.Fatalf("client read %d bytes, want the %d the server wrote (equal: %v)", len(c.b), size, bytes.Equal(c.b, down))
		}
		if len(s.b) != size || !bytes.Equal(s.b, up) {
			t.Fatalf("server read %d bytes, want the %d the client wrote (equal: %v)", len(s.b), size, bytes.Equal(s.b, up))
		}
		_ = cr.Close()
		_ = sr.Close()
		if cr.Err() == nil || errors.Is(cr.Err(), tunnel.ErrPeerReset) {
			t.Fatalf("client stream after a clean close: err %v", cr.Err())
		}
		clink2.cut()
		slink2.cut()
	})
}

// TestResumable_WriteBlocksWhenBufferFull: a Write beyond the replay
// buffer (64 KiB) waits for the peer's ack, and one beyond a shared
// budget (96 KiB for two streams of 64 KiB) waits for the other stream's.
func TestResumable_WriteBlocksWhenBufferFull(t *testing.T) {
	p := newPair(t, "tls")
	cst, sst := streamPair(t, p)
	cst2, sst2 := streamPair(t, p)
	var none atomic.Pointer[tunnel.Resumable]
	link := &testLink{peer: &none, noAck: true}
	budget := tunnel.NewResumeBudget(96 << 10)
	cfg := tunnel.ResumableConfig{ID: 1, Buffer: 64 << 10, Budget: budget, Grace: time.Minute}
	w := tunnel.NewResumable(cfg, cst, link)
	cfg.ID = 2
	w2 := tunnel.NewResumable(cfg, cst2, link)
	t.Cleanup(func() { w.Abort(); w2.Abort() })
	if _, err := w.Write(make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(sst, make([]byte, 64<<10)); err != nil {
		t.Fatalf("peer read: %v", err)
	}
	done := make(chan error, 1)
	go func() { _, err := w.Write([]byte("x")); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("Write past a full buffer returned (%v) without an ack", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := w.Acked(32 << 10); err != nil {
		t.Fatal(err)
	}
	if err := within(t, done, 5*time.Second, "Write after the ack"); err != nil {
		t.Fatal(err)
	}
	if got := w.Buffered(); got != 32<<10+1 {
		t.Fatalf("buffered %d after ack of 32 KiB, want %d", got, 32<<10+1)
	}
	// The budget: w holds 32 KiB + 1, and at most BudgetQuantum more
	// taken ahead for its next writes; w2 may take the rest.
	if used := budget.Used(); used < 32<<10+1 || used > 32<<10+1+tunnel.BudgetQuantum {
		t.Fatalf("budget used %d with 32 KiB + 1 buffered, want that plus at most %d of credit", used, tunnel.BudgetQuantum)
	}
	room := 96<<10 - budget.Used()
	if _, err := w2.Write(make([]byte, room)); err != nil {
		t.Fatal(err)
	}
	go func() { _, err := w2.Write([]byte("y")); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("Write past the budget returned (%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	if got := budget.Used(); got != 96<<10 {
		t.Fatalf("budget used %d, want %d", got, 96<<10)
	}
	if err := w.Acked(32<<10 + 1); err != nil { // the other stream frees room
		t.Fatal(err)
	}
	if err := within(t, done, 5*time.Second, "Write after the budget freed"); err != nil {
		t.Fatal(err)
	}
	if err := w.Acked(1 << 30); !errors.Is(err, tunnel.ErrResumeOffset) {
		t.Fatalf("ack beyond sent: %v, want ErrResumeOffset", err)
	}
	w.Abort()
	w2.Abort()
	if got := budget.Used(); got != 0 {
		t.Fatalf("budget used %d after both streams ended, want 0", got)
	}
	_ = sst2
}

// TestResumable_BudgetCredit: small writes take the shared budget a
// quantum at a time (BudgetQuantum), not each on its own: 100 writes of
// 14 bytes leave it at one quantum; the stream's credit never passes a
// quantum; an ack that leaves bytes buffered keeps at most a quantum
// taken; one that empties the buffer, or the stream's end, gives all of it
// back.
func TestResumable_BudgetCredit(t *testing.T) {
	const q = tunnel.BudgetQuantum
	budget := tunnel.NewResumeBudget(1 << 20)
	r := tunnel.NewResumable(tunnel.ResumableConfig{ID: 1, Budget: budget, Grace: time.Minute}, newRecordStream(), nopLink{})
	t.Cleanup(r.Abort)
	req := []byte("*1\r\n$4\r\nPING\r\n")
	for range 100 {
		if _, err := r.Write(req); err != nil {
			t.Fatal(err)
		}
	}
	if got := budget.Used(); got != q {
		t.Fatalf("budget used %d after 100 writes of %d bytes, want one quantum (%d)", got, len(req), q)
	}
	// Past the first quantum: a second one, not one take per write.
	for range 300 {
		if _, err := r.Write(req); err != nil {
			t.Fatal(err)
		}
	}
	sent := 400 * len(req)
	if got, want := budget.Used(), (sent+q-1)/q*q; got != want {
		t.Fatalf("budget used %d after %d bytes in writes of %d, want %d (whole quanta)", got, sent, len(req), want)
	}
	// An ack of all but the last request keeps at most a quantum of credit.
	if err := r.Acked(uint64(sent - len(req))); err != nil {
		t.Fatal(err)
	}
	if got := budget.Used(); got < len(req) || got > len(req)+q {
		t.Fatalf("budget used %d with %d bytes buffered, want those plus at most %d", got, len(req), q)
	}
	// An ack that empties the buffer gives everything back.
	if err := r.Acked(uint64(sent)); err != nil {
		t.Fatal(err)
	}
	if got := budget.Used(); got != 0 {
		t.Fatalf("budget used %d with the buffer empty, want 0", got)
	}
	// So does the stream's end, with bytes and credit held.
	if _, err := r.Write(req); err != nil {
		t.Fatal(err)
	}
	r.Abort()
	if got := budget.Used(); got != 0 {
		t.Fatalf("budget used %d after the stream ended, want 0", got)
	}
}

// TestResumable_GraceExpiry: a stream not re-attached within its grace
// fails both ways, with ErrResumeExpired, and says so once through OnEnd.
func TestResumable_GraceExpiry(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		cst, sst := streamPair(t, p)
		var peer atomic.Pointer[tunnel.Resumable]
		link := newTestLink(&peer)
		ended := make(chan error, 2)
		cfg := tunnel.ResumableConfig{ID: 3, Grace: 100 * time.Millisecond,
			OnEnd: func(_ *tunnel.Resumable, err error) { ended <- err }}
		cr := tunnel.NewResumable(cfg, cst, link)
		sr := tunnel.NewResumable(cfg, sst, link)
		rd := make(chan error, 2)
		go func() { _, err := cr.Read(make([]byte, 10)); rd <- err }()
		go func() { _, err := sr.Read(make([]byte, 10)); rd <- err }()
		p.client.Close()
		cr.Detach()
		sr.Detach()
		for i := 0; i < 2; i++ {
			if err := within(t, rd, 10*time.Second, "Read ends at grace"); !errors.Is(err, tunnel.ErrResumeExpired) {
				t.Fatalf("Read after grace: %v, want ErrResumeExpired", err)
			}
			if err := within(t, ended, 5*time.Second, "OnEnd"); !errors.Is(err, tunnel.ErrResumeExpired) {
				t.Fatalf("OnEnd: %v", err)
			}
		}
		if _, err := cr.Write([]byte("late")); !errors.Is(err, tunnel.ErrResumeExpired) {
			t.Fatalf("Write after grace: %v, want ErrResumeExpired", err)
		}
		p3 := newPair(t, p.transport)
		c3, _ := streamPair(t, p3)
		if err := cr.Attach(c3, 0, link); !errors.Is(err, tunnel.ErrResumeExpired) {
			t.Fatalf("Attach after grace: %v", err)
		}
		link.cut()
	})
}

// TestResumable_ResetAndFin: an underlying EOF is not the end of a
// Resumable; the peer's Fin is, and its Reset fails the stream.
func TestResumable_ResetAndFin(t *testing.T) {
	forEachTransport(t, func(t *testing.T, p pair) {
		cst, sst := streamPair(t, p)
		var cPeer, sPeer atomic.Pointer[tunnel.Resumable]
		clink, slink := newTestLink(&cPeer), newTestLink(&sPeer)
		cfg := tunnel.ResumableConfig{ID: 4, Grace: time.Minute}
		cr := tunnel.NewResumable(cfg, cst, clink)
		sr := tunnel.NewResumable(cfg, sst, slink)
		cPeer.Store(sr)
		sPeer.Store(cr)
		// The underlying stream ends without a Fin: the reader waits.
		_ = sst.CloseWrite()
		rd := make(chan error, 1)
		go func() { _, err := cr.Read(make([]byte, 10)); rd <- err }()
		select {
		case err := <-rd:
			t.Fatalf("Read returned %v at an underlying EOF without Fin", err)
		case <-time.After(200 * time.Millisecond):
		}
		sr.PeerFin(0) // as if the server's Fin arrived: the end
		cr.PeerFin(0)
		if err := within(t, rd, 5*time.Second, "Read after Fin"); err != io.EOF {
			t.Fatalf("Read after Fin: %v, want io.EOF", err)
		}
		// Reset: the server aborts, the client's writes fail.
		sr.Abort()
		waitFor(t, 5*time.Second, "client reset", func() bool { return errors.Is(cr.Err(), tunnel.ErrPeerReset) })
		if _, err := cr.Write([]byte("x")); !errors.Is(err, tunnel.ErrPeerReset) {
			t.Fatalf("Write after peer reset: %v", err)
		}
		clink.cut()
		slink.cut()
	})
}

// waitFor polls cond until it holds, at most d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// recordStream is a Stream that keeps every byte written to it (copied:
// the writer's buffer may be reused once Write returns) and reads
// nothing until aborted.
type recordStream struct {
	mu   sync.Mutex
	got  []byte
	once sync.Once
	done chan struct{}
}

func newRecordStream() *recordStream { return &recordStream{done: make(chan struct{})} }

func (s *recordStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, p...)
	return len(p), nil
}

func (s *recordStream) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.got)
}

func (s *recordStream) Read([]byte) (int, error)       { <-s.done; return 0, io.EOF }
func (s *recordStream) WaitReadable() error            { <-s.done; return io.EOF }
func (s *recordStream) Close() error                   { s.Abort(); return nil }
func (*recordStream) CloseWrite() error                { return nil }
func (s *recordStream) Abort()                         { s.once.Do(func() { close(s.done) }) }
func (*recordStream) SetDeadline(time.Time) error      { return nil }
func (*recordStream) SetReadDeadline(time.Time) error  { return nil }
func (*recordStream) SetWriteDeadline(time.Time) error { return nil }
func (*recordStream) FlushOpen() error                 { return nil }

// TestResumable_RelayHandsOverBuffers: the relay hands its 64 KiB read
// buffers to a Resumable instead of copying them (writeOwned); each is
// charged its whole capacity against the stream's bound and the budget,
// goes back to the pool (and to later reads) only once acknowledged, and
// the bytes written and replayed stay exactly what the connection sent.
// 4 MiB of pseudo-random bytes cross a 256 KiB bound, so the relay blocks
// on it until acks free room; halfway the stream moves to a new
// underlying stream and replays what was not acknowledged.
func TestResumable_RelayHandsOverBuffers(t *testing.T) {
	const size, bound = 4 << 20, 256 << 10
	data := pseudo(5, size)
	app, conn := tunnel.TCPPair(t)
	budget := tunnel.NewResumeBudget(1 << 20)
	cur := newRecordStream()
	r := tunnel.NewResumable(tunnel.ResumableConfig{ID: 1, Buffer: bound, Budget: budget, Grace: time.Minute}, cur, nopLink{})
	done := make(chan tunnel.RelayResult, 1)
	go func() { done <- tunnel.Relay(context.Background(), conn, r, nil) }()
	go func() {
		_, _ = app.Write(data)
		_ = app.CloseWrite()
	}()
	var acked, curStart uint64 // curStart: the offset of cur's first byte
	moved := false
	deadline := time.Now().Add(30 * time.Second)
	for acked < size {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes acknowledged after 30 s", acked, size)
		}
		// The budget may hold up to BudgetQuantum of credit on top of the
		// buffer (takeBudgetLocked); the buffer itself never passes bound.
		if used, held := budget.Used(), r.Buffered(); used > bound+tunnel.BudgetQuantum || held > bound {
			t.Fatalf("budget holds %d, buffer %d bytes: bound %d, plus %d of credit for the budget", used, held, bound, tunnel.BudgetQuantum)
		}
		got := cur.bytes()
		if end := curStart + uint64(len(got)); end > size || !bytes.Equal(got, data[curStart:end]) {
			t.Fatalf("the stream got %d bytes from offset %d that differ from what the connection sent", len(got), curStart)
		}
		if !moved && acked >= size/2 {
			r.Detach()
			next := newRecordStream()
			if err := r.Attach(next, acked, nopLink{}); err != nil {
				t.Fatal(err)
			}
			cur.Abort()
			cur, curStart, moved = next, acked, true
			continue
		}
		if has := curStart + uint64(len(got)); has > acked {
			if err := r.Acked(has); err != nil {
				t.Fatal(err)
			}
			acked = has
		}
		time.Sleep(time.Millisecond)
	}
	r.Abort() // the relay waits for a Fin that nopLink never brings
	res := within(t, done, 10*time.Second, "relay end")
	if res.ConnToStream != size {
		t.Fatalf("relayed %d bytes, want %d", res.ConnToStream, size)
	}
	if got := budget.Used(); got != 0 {
		t.Fatalf("budget holds %d bytes after the end, want 0", got)
	}
}

// TestResumeBudget_Concurrent: writers of two keys under one gateway
// budget take and give back bytes at once, far more than fits. What they
// hold never passes a key's limit or the gateway's, no writer is left
// waiting once others have given back (every one of 8 × 2,000 takes
// finishes within 20 s), and all of it is back at the end.
func TestResumeBudget_Concurrent(t *testing.T) {
	const (
		gwLimit, keyLimit = 48 << 10, 32 << 10
		writers, takes    = 4, 2000
	)
	gw := tunnel.NewResumeBudget(gwLimit)
	keys := []*tunnel.ResumeBudget{gw.Child(keyLimit), gw.Child(keyLimit)}
	var held [2]atomic.Int64
	var gwHeld atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 2*writers)
	for k, key := range keys {
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range takes {
					n := 1 + (i*7919+w*104729)%(16<<10)
					if !key.Acquire(n, func() bool { return false }) {
						errs <- fmt.Errorf("key %d: acquire %d refused with no stop", k, n)
						return
					}
					if h := held[k].Add(int64(n)); h > keyLimit {
						errs <- fmt.Errorf("key %d holds %d bytes, over its limit %d", k, h, keyLimit)
					}
					if h := gwHeld.Add(int64(n)); h > gwLimit {
						errs <- fmt.Errorf("the gateway holds %d bytes, over its limit %d", h, gwLimit)
					}
					runtime.Gosched()
					held[k].Add(-int64(n))
					gwHeld.Add(-int64(n))
					key.Release(n)
				}
			}()
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("writers still waiting after 20 s: key use %d and %d, gateway %d", keys[0].Used(), keys[1].Used(), gw.Used())
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if keys[0].Used() != 0 || keys[1].Used() != 0 || gw.Used() != 0 {
		t.Fatalf("after every release the budgets hold %d, %d and %d bytes, want 0", keys[0].Used(), keys[1].Used(), gw.Used())
	}

	// stop gives up a wait: a full budget refuses, and releases nothing.
	if !keys[0].Acquire(keyLimit, func() bool { return false }) {
		t.Fatal("an empty key refused its whole limit")
	}
	var stopped atomic.Bool
	got := make(chan bool, 1)
	go func() { got <- keys[0].Acquire(1, stopped.Load) }()
	time.Sleep(20 * time.Millisecond)
	stopped.Store(true)
	gw.Wake()
	select {
	case ok := <-got:
		if ok {
			t.Fatal("an acquire on a full key succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an acquire told to stop still waits 5 s after the wake")
	}
	if keys[0].Used() != keyLimit {
		t.Fatalf("after the refused acquire the key holds %d bytes, want %d", keys[0].Used(), keyLimit)
	}
}
