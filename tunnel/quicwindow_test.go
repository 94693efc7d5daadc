package tunnel_test

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/cachetun/cachetun/tunnel"
)

// stallRun feeds a stall watch 3 s of 50 ms samples from step and returns
// when (after the first sample) it first asked for a refresh, or -1.
func stallRun(writing int32, step func(i int, st *quic.ConnectionStats)) (first time.Duration, count int) {
	var w atomic.Int32
	w.Store(writing)
	sw := tunnel.NewStallWatch(&w)
	t0 := time.Unix(1000, 0)
	st := quic.ConnectionStats{MinRTT: 80 * time.Millisecond, SmoothedRTT: 80 * time.Millisecond, CongestionWindow: 40960}
	first = -1
	for i := range 60 {
		step(i, &st)
		now := t0.Add(time.Duration(i) * 50 * time.Millisecond)
		if sw.Sample(now, st) {
			if first < 0 {
				first = now.Sub(t0)
			}
			count++
		}
	}
	return first, count
}

// TestStallWatch_AfterDownload: a client that received a large transfer
// while its own window stayed at its start has had quic-go leave slow
// start (the download's queue raised its round trips), so once its own
// upload fills that window it refreshes at the next sample, not after two
// round trips.
func TestStallWatch_AfterDownload(t *testing.T) {
	run := func(received uint64, during uint64, switchAt int) (time.Duration, int) {
		var writing atomic.Int32
		var switches atomic.Int64
		w := tunnel.NewClientStallWatch(&writing, &switches)
		t0 := time.Unix(1000, 0)
		st := quic.ConnectionStats{MinRTT: 80 * time.Millisecond, SmoothedRTT: 80 * time.Millisecond, CongestionWindow: 40960}
		first, n := time.Duration(-1), 0
		for i := range 60 {
			now := t0.Add(time.Duration(i) * 50 * time.Millisecond)
			switch {
			case i < 10: // the download: nothing to write
				st.BytesReceived += received / 10
			default: // the upload
				writing.Store(1)
				full(&st)
				st.CongestionWindow += 1200 / 2
				st.BytesReceived += during
			}
			if i == switchAt {
				switches.Add(1)
			}
			if w.Sample(now, st) {
				if first < 0 {
					first = now.Sub(t0)
				}
				n++
			}
		}
		return first, n
	}
	// The upload starts at 500 ms; its first sample starts the stall and
	// the next judges it.
	if first, n := run(32<<20, 1000, -1); first != 550*time.Millisecond || n != 1 {
		t.Errorf("after a 32 MiB download: refresh at %v, %d times; want once, at 550ms", first, n)
	}
	for _, c := range []struct {
		name             string
		received, during uint64
		switchAt         int
	}{
		{"after 1 MiB received", 1 << 20, 1000, -1},
		{"while the peer still sends", 32 << 20, 200 << 10, -1},
		{"after a path switch since the download", 32 << 20, 1000, 9},
	} {
		// The two round trips of any stall: from 500 ms, at 700 ms.
		if first, n := run(c.received, c.during, c.switchAt); first != 700*time.Millisecond || n != 1 {
			t.Errorf("%s: refresh at %v, %d times; want once, at 700ms", c.name, first, n)
		}
	}
}

// full sends one congestion window per round trip: 50/80 of it per tick.
func full(st *quic.ConnectionStats) { st.BytesSent += st.CongestionWindow * 5 / 8 }

func TestStallWatch(t *testing.T) {
	t.Run("congestion avoidance far below the path asks once", func(t *testing.T) {
		first, n := stallRun(1, func(i int, st *quic.ConnectionStats) {
			full(st)
			st.CongestionWindow += 1200 / 2 // Reno: one packet per round trip
		})
		// The first sample has no predecessor, the second starts the stall,
		// which must last 2 round trips (160 ms): the sixth sample, at 250 ms.
		if first != 250*time.Millisecond || n != 1 {
			t.Fatalf("refresh at %v, %d times in 3 s; want once, at 250ms (and not again within %v)", first, n, tunnel.RefreshEvery)
		}
	})
	t.Run("a stall after a new path, on a session whose window was once cut by loss, asks", func(t *testing.T) {
		first, n := stallRun(1, func(i int, st *quic.ConnectionStats) {
			switch {
			case i == 0:
				st.CongestionWindow = 4 << 20
			case i == 2:
				st.PacketsLost += 900
				st.CongestionWindow = st.CongestionWindow * 7 / 10
			case i == 4: // a path switch: slow start from 38 KiB, left at once
				st.CongestionWindow = 38400
			case i > 4:
				st.CongestionWindow += 1200 / 2
			}
			full(st)
		})
		// The window restarted, so the loss before does not count: the
		// stall starts with the new window (200 ms) and lasts 2 round trips.
		if first != 400*time.Millisecond || n != 1 {
			t.Fatalf("refresh at %v, %d times in 3 s; want once, at 400ms", first, n)
		}
	})
	t.Run("bursts across a 200 ms round trip ask once", func(t *testing.T) {
		first, n := stallRun(1, func(i int, st *quic.ConnectionStats) {
			st.MinRTT, st.SmoothedRTT = 200*time.Millisecond, 202*time.Millisecond
			if i%4 != 3 { // the window in three 50 ms bursts, then nothing
				st.BytesSent += st.CongestionWindow / 3
			}
			if i%4 == 0 {
				st.CongestionWindow += 1200
			}
		})
		// The stall must last 2 round trips (404 ms) from the second sample.
		if first != 500*time.Millisecond || n != 1 {
			t.Fatalf("refresh at %v, %d times in 3 s; want once, at 500ms", first, n)
		}
	})
	for _, c := range []struct {
		name    string
		writing int32
		step    func(i int, st *quic.ConnectionStats)
	}{
		{"slow start", 1, func(i int, st *quic.ConnectionStats) {
			full(st)
			if i%2 == 0 && st.CongestionWindow < 4<<20 { // until past refreshMaxWindow
				st.CongestionWindow = st.CongestionWindow * 3 / 2 // ×2.25 per round trip
			}
		}},
		{"a loss every 150 ms", 1, func(i int, st *quic.ConnectionStats) {
			full(st)
			if i%3 == 0 {
				st.PacketsLost++
			}
		}},
		{"a queue building (RTT 100 ms over 80)", 1, func(i int, st *quic.ConnectionStats) {
			st.SmoothedRTT = 100 * time.Millisecond
			full(st)
		}},
		{"sending a third of the window", 1, func(i int, st *quic.ConnectionStats) {
			st.BytesSent += st.CongestionWindow * 5 / 8 / 3
		}},
		{"no stream writing", 0, func(i int, st *quic.ConnectionStats) { full(st) }},
		{"a window of 2 MiB", 1, func(i int, st *quic.ConnectionStats) {
			st.CongestionWindow = 2 << 20
			full(st)
		}},
		{"congestion avoidance after the losses of a fast slow start", 1, func(i int, st *quic.ConnectionStats) {
			// The shape of a 32 MiB GET at 80 ms / 200 Mbit: slow start
			// overshoots to 4 MiB, two loss episodes cut the window to
			// 1.5 MiB (18 MiB/s), then it grows by a packet per round trip.
			switch {
			case i == 0:
				st.CongestionWindow = 4 << 20
			case i == 2:
				st.PacketsLost += 900
				st.CongestionWindow = st.CongestionWindow * 7 / 10
			case i == 6:
				st.PacketsLost += 400
				st.CongestionWindow = st.CongestionWindow * 7 / 10
			case i > 6:
				st.CongestionWindow += 1200 / 2
			}
			full(st)
		}},
		{"no RTT sample yet", 1, func(i int, st *quic.ConnectionStats) {
			st.MinRTT, st.SmoothedRTT = 0, 0
			full(st)
		}},
	} {
		t.Run(c.name+" does not ask", func(t *testing.T) {
			if first, n := stallRun(c.writing, c.step); n != 0 {
				t.Fatalf("refresh at %v (%d times); want none", first, n)
			}
		})
	}
}

// TestQUICWindowRefresh_KeepsStreams switches a live session's path four
// times (three by the client, one asked by the server) while 8 MiB go
// each way on one stream, and checks every byte arrives, in order.
func TestQUICWindowRefresh_KeepsStreams(t *testing.T) {
	tunnel.VerifyNoLeaks(t)
	p := newPair(t, "quic")
	cst, sst := streamPair(t, p)
	const size = 8 << 20
	up, down := make([]byte, size), make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range up {
		up[i], down[i] = byte(rng.Uint32()), byte(rng.Uint32())
	}
	_ = cst.SetDeadline(time.Now().Add(60 * time.Second))
	_ = sst.SetDeadline(time.Now().Add(60 * time.Second))
	errs := make(chan error, 4)
	send := func(st tunnel.Stream, b []byte) {
		for off := 0; off < len(b); off += 32 << 10 { // in pieces, so the switches land mid-transfer
			if _, err := st.Write(b[off : off+32<<10]); err != nil {
				errs <- err
				return
			}
			time.Sleep(200 * time.Microsecond)
		}
		errs <- st.CloseWrite()
	}
	recv := func(st tunnel.Stream, want []byte, what string) {
		got, err := io.ReadAll(st)
		if err == nil && !bytes.Equal(got, want) {
			err = fmt.Errorf("%s: %d bytes arrived of %d, not the bytes sent", what, len(got), len(want))
		}
		errs <- err
	}
	go send(cst, up)
	go send(sst, down)
	go recv(sst, up, "client to server")
	go recv(cst, down, "server to client")

	for i := 1; i <= 3; i++ {
		if n := tunnel.RefreshQUICPath(p.client); n != int64(i) {
			t.Fatalf("client refresh %d: %d switches done", i, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tunnel.AskQUICRefresh(p.server)
	deadline := time.Now().Add(5 * time.Second)
	for tunnel.QUICPathRefreshes(p.client) < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := tunnel.QUICPathRefreshes(p.client); n != 4 {
		t.Fatalf("after the server asked: %d switches, want 4 (bound 5 s)", n)
	}
	for range 4 {
		if err := within(t, errs, 60*time.Second, "transfers"); err != nil {
			t.Fatal(err)
		}
	}
}
