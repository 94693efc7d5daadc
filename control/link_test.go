package control

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cachetun/cachetun/tunnel"
)

func TestLink_FrameRoundTrip(t *testing.T) {
	acks := []AckEntry{{ID: 1, Recv: 2}, {ID: 1<<64 - 1, Recv: 1<<64 - 1}, {}}
	got, err := DecodeAck(AppendAck(nil, acks))
	if err != nil || len(got) != 3 || got[1] != acks[1] {
		t.Fatalf("ack round trip: %v, %v", got, err)
	}
	if id, off, err := DecodeFin(AppendFin(nil, 7, 8<<20)); err != nil || id != 7 || off != 8<<20 {
		t.Fatalf("fin round trip: %d %d %v", id, off, err)
	}
	if id, err := DecodeReset(AppendReset(nil, 9)); err != nil || id != 9 {
		t.Fatalf("reset round trip: %d %v", id, err)
	}
	for name, p := range map[string][]byte{
		"empty":          nil,
		"count too big":  {0xff, 0xff},
		"short entry":    {0, 1, 1, 2, 3},
		"trailing bytes": append(AppendAck(nil, acks[:1]), 0),
	} {
		if _, err := DecodeAck(p); !errors.Is(err, ErrBadResumeFrame) {
			t.Errorf("DecodeAck %s: %v, want ErrBadResumeFrame", name, err)
		}
	}
	if _, _, err := DecodeFin(make([]byte, 15)); !errors.Is(err, ErrBadResumeFrame) {
		t.Errorf("short fin: %v", err)
	}
	if _, err := DecodeReset(make([]byte, 9)); !errors.Is(err, ErrBadResumeFrame) {
		t.Errorf("long reset: %v", err)
	}
}

// FuzzResumeFrames: the binary payloads of FrameAck, FrameFin and
// FrameReset come from the peer; decoding never panics, never allocates
// more entries than MaxAcksPerFrame, and round-trips what it accepts.
func FuzzResumeFrames(f *testing.F) {
	f.Add(AppendAck(nil, []AckEntry{{ID: 1, Recv: 5}}))
	f.Add(AppendAck(nil, nil))
	f.Add([]byte{0xff, 0xff})                   // 65535 entries declared, none there
	f.Add([]byte{0x04, 0x01})                   // MaxAcksPerFrame + 1
	f.Add(AppendFin(nil, 1<<64-1, 1<<64-1))     // extreme offsets
	f.Add(AppendReset(nil, 0))                  // id 0
	f.Add(append(AppendReset(nil, 3), 0, 0, 0)) // trailing bytes
	f.Fuzz(func(t *testing.T, p []byte) {
		if acks, err := DecodeAck(p); err == nil {
			if len(acks) > MaxAcksPerFrame || !bytes.Equal(AppendAck(nil, acks), p) {
				t.Fatalf("ack: %d entries, round trip differs", len(acks))
			}
		}
		if id, off, err := DecodeFin(p); err == nil && !bytes.Equal(AppendFin(nil, id, off), p) {
			t.Fatal("fin round trip differs")
		}
		if id, err := DecodeReset(p); err == nil && !bytes.Equal(AppendReset(nil, id), p) {
			t.Fatal("reset round trip differs")
		}
		l := NewLink(func([]byte) error { return nil })
		for _, typ := range []FrameType{FrameAck, FrameFin, FrameReset} {
			_, _ = l.Handle(typ, p) // no stream attached: nothing to reach
		}
	})
}

// recorder records the frames a Link writes.
type recorder struct {
	mu     sync.Mutex
	frames []FrameType
	acks   []AckEntry
	writes int
}

func (r *recorder) write(frames []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes++
	rd := bytes.NewReader(frames)
	for rd.Len() > 0 {
		typ, p, err := ReadFrame(rd)
		if err != nil {
			return err
		}
		r.frames = append(r.frames, typ)
		if typ == FrameAck {
			a, err := DecodeAck(p)
			if err != nil {
				return err
			}
			r.acks = append(r.acks, a...)
		}
	}
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.frames)
}

// nopStream is enough of a tunnel.Stream for a Resumable that is never
// read or written here.
type nopStream struct{ tunnel.Stream }

func (nopStream) Abort() {}

// TestLink_BatchesAndDispatches: acks of several streams go out in one
// frame within AckDelay; Fin and Reset at once; the peer's frames reach
// the stream they name, and only while it is attached.
func TestLink_BatchesAndDispatches(t *testing.T) {
	rec := &recorder{}
	l := NewLink(rec.write)
	a := tunnel.NewResumable(tunnel.ResumableConfig{ID: 1, Grace: time.Minute}, nopStream{}, l)
	b := tunnel.NewResumable(tunnel.ResumableConfig{ID: 2, Grace: time.Minute}, nopStream{}, l)
	l.Add(a)
	l.Add(b)
	l.Ack(a, false)
	l.Ack(b, false)
	deadline := time.Now().Add(5 * time.Second)
	for rec.count() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	rec.mu.Lock()
	if len(rec.frames) != 1 || rec.frames[0] != FrameAck || len(rec.acks) != 2 {
		t.Fatalf("frames %v acks %v, want one FrameAck of 2 streams", rec.frames, rec.acks)
	}
	rec.mu.Unlock()
	l.Fin(1, 10)
	l.Reset(2)
	for rec.count() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if rec.count() != 3 {
		t.Fatalf("Fin and Reset not written: %v", rec.frames)
	}
	if ok, err := l.Handle(FrameFin, AppendFin(nil, 1, 0)); !ok || err != nil {
		t.Fatalf("Handle fin: %v %v", ok, err)
	}
	if ok, err := l.Handle(FrameAck, AppendAck(nil, []AckEntry{{ID: 1, Recv: 1}})); !ok || !errors.Is(err, tunnel.ErrResumeOffset) {
		t.Fatalf("ack beyond sent: %v %v, want ErrResumeOffset", ok, err)
	}
	if ok, _ := l.Handle(FramePing, nil); ok {
		t.Fatal("Handle took a ping")
	}
	if _, err := l.Handle(FrameReset, AppendReset(nil, 2)); err != nil || !errors.Is(b.Err(), tunnel.ErrPeerReset) {
		t.Fatalf("reset: %v, stream err %v", err, b.Err())
	}
	got := l.DetachAll()
	if len(got) != 2 {
		t.Fatalf("DetachAll returned %d streams, want 2", len(got))
	}
	if l.Add(a) {
		t.Fatal("Add after DetachAll succeeded")
	}
	if _, err := l.Handle(FrameReset, AppendReset(nil, 1)); err != nil || a.Err() != nil {
		t.Fatalf("a frame after DetachAll reached the stream: %v %v", err, a.Err())
	}
	a.Abort()
}

// TestLink_AckAfterFlush: a flush that a Fin brings takes the acks that
// waited for the batching timer and disarms it; an ack after that arms the
// same timer again and still goes out within AckDelay, with no flush left
// pending after it.
func TestLink_AckAfterFlush(t *testing.T) {
	rec := &recorder{}
	l := NewLink(rec.write)
	a := tunnel.NewResumable(tunnel.ResumableConfig{ID: 1, Grace: time.Minute}, nopStream{}, l)
	defer a.Abort()
	l.Add(a)
	wait := func(n int, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		for rec.count() < n && time.Since(start) < within {
			time.Sleep(time.Millisecond)
		}
		if got := rec.count(); got != n {
			t.Fatalf("%d frames written within %v, want %d: %v", got, within, n, rec.frames)
		}
		return time.Since(start)
	}
	for round := range 3 {
		l.Ack(a, false) // arms the timer
		l.Fin(9, 1)     // flushes at once, the ack with it
		wait(2*round+2, time.Second)
		if round == 2 {
			break
		}
		rec.mu.Lock()
		got := rec.frames[len(rec.frames)-2:]
		rec.mu.Unlock()
		if got[0] != FrameAck || got[1] != FrameFin {
			t.Fatalf("round %d: frames %v, want the ack, then the Fin", round, got)
		}
	}
	l.Ack(a, false)
	if d := wait(7, 5*time.Second); d > tunnel.AckDelay+500*time.Millisecond {
		t.Fatalf("the ack after the flushes took %v, want about AckDelay (%v)", d, tunnel.AckDelay)
	}
	time.Sleep(2 * tunnel.AckDelay)
	if n := rec.count(); n != 7 {
		t.Fatalf("%d frames after the last ack's, want none more: %v", n-7, rec.frames)
	}
}

// TestLink_EarlyReset: a Reset (or Fin) read before its stream is
// attached, as when a client opens a stream and stops at once, reaches the
// stream when it is attached; what is kept for unknown ids is bounded.
func TestLink_EarlyReset(t *testing.T) {
	l := NewLink((&recorder{}).write)
	if _, err := l.Handle(FrameReset, AppendReset(nil, 7)); err != nil {
		t.Fatal(err)
	}
	r := tunnel.NewResumable(tunnel.ResumableConfig{ID: 7, Grace: time.Minute}, nopStream{}, l)
	defer r.Abort()
	if !l.Add(r) {
		t.Fatal("Add failed")
	}
	if !errors.Is(r.Err(), tunnel.ErrPeerReset) {
		t.Fatalf("stream err %v after an early Reset, want ErrPeerReset", r.Err())
	}
	// Frames for ids never attached age out: at most maxEarly are kept,
	// and the order list stays bounded too.
	for id := uint64(1000); id < 1000+10*maxEarly; id++ {
		if _, err := l.Handle(FrameFin, AppendFin(nil, id, 1)); err != nil {
			t.Fatal(err)
		}
	}
	l.mu.Lock()
	n, order := len(l.early), len(l.earlyOrder)
	l.mu.Unlock()
	if n > maxEarly || order > 2*maxEarly {
		t.Fatalf("early holds %d ids (order %d), want at most %d (%d)", n, order, maxEarly, 2*maxEarly)
	}
	// An attached stream clears its entry; later ids still work.
	s := tunnel.NewResumable(tunnel.ResumableConfig{ID: 1000 + 10*maxEarly - 1, Grace: time.Minute}, nopStream{}, l)
	defer s.Abort()
	l.Add(s)
	l.mu.Lock()
	_, still := l.early[s.ID()]
	l.mu.Unlock()
	if still {
		t.Fatal("the attached stream's early entry was kept")
	}
}

// TestLink_CoalescesFrames: Fins queued while a write is on its way all go
// out in the next write, in order (under a new connection per request, the
// Fins of many streams share one transport frame instead of one each).
func TestLink_CoalescesFrames(t *testing.T) {
	const n = 100
	release := make(chan struct{})
	inWrite := make(chan struct{})
	var mu sync.Mutex
	var writes [][]uint64 // the Fins' ids, per write
	l := NewLink(func(b []byte) error {
		mu.Lock()
		first := len(writes) == 0
		mu.Unlock()
		if first {
			close(inWrite)
			<-release
		}
		var ids []uint64
		rd := bytes.NewReader(b)
		for rd.Len() > 0 {
			typ, p, err := ReadFrame(rd)
			if err != nil || typ != FrameFin {
				t.Errorf("frame %d, %v; want only Fins", typ, err)
				return err
			}
			id, _, err := DecodeFin(p)
			if err != nil {
				return err
			}
			ids = append(ids, id)
		}
		mu.Lock()
		writes = append(writes, ids)
		mu.Unlock()
		return nil
	})
	l.Fin(1, 1)
	<-inWrite
	for id := uint64(2); id <= n; id++ {
		l.Fin(id, id)
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got := 0
		for _, w := range writes {
			got += len(w)
		}
		mu.Unlock()
		if got == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d Fins written after 5 s", got, n)
		}
		time.Sleep(time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(writes) != 2 || len(writes[0]) != 1 {
		t.Fatalf("%d writes of %v Fins, want 2: the first alone, then the %d queued meanwhile", len(writes), writes, n-1)
	}
	for i, id := range writes[1] {
		if id != uint64(i+2) {
			t.Fatalf("second write: Fin %d at %d, want them in order", id, i)
		}
	}
}
