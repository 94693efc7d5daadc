package tunnel

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// A QUIC session's congestion window can get stuck far below what the path
// carries, and this file works around it at our boundary.
//
// quic-go (v0.65.0) runs Reno with hybrid slow start and no pluggable
// congestion control (quic-go/quic-go#776). Hybrid slow start leaves slow
// start when the round trip of its packets grows by an eighth, and it looks
// even while the sender has little to send. One session carries both
// directions, so while the laptop downloads a large value, the gateway's
// data fills the bottleneck queue toward the laptop, the laptop's few
// ack-eliciting packets (window updates, PINGs) see their ACKs wait in that
// queue, and the laptop's sender leaves slow start at its initial 40 KiB
// window without having lost a packet. The next large upload then grows by
// one packet per round trip: measured across an 80 ms / 200 Mbit link
// (make bench-wan), a 32 MiB SET after a 32 MiB GET ran at 2 MiB/s, the
// same SET on a fresh session at 16 MiB/s; the mirror case (a GET after a
// SET) ran at 1.9 MiB/s.
//
// quic-go restarts slow start only on a path change, so that is what the
// client does when its sender shows the signature of that stall: streams
// are waiting to write, the connection sends a full window per round trip,
// the window has not grown by half in two round trips, no packet
// was lost meanwhile, and the round trip is still near its minimum (no
// queue is building, so the path has room). The client then probes a new
// path on a fresh UDP socket and switches to it, which gives both ends a
// fresh window (quic-go resets the server's on the switch too). The
// gateway watches its own sender the same way and, when it stalls, asks the
// client to do it over a unidirectional stream it opens for that (one byte
// per request; see PROTOCOL.md "QUIC window refresh"). At most one refresh
// per refreshEvery; the client keeps at most two extra sockets and
// alternates between them.

const (
	refreshTick     = 50 * time.Millisecond
	refreshMinRTTs  = 2                      // stall length, in round trips
	refreshMinStall = 150 * time.Millisecond // and in time
	refreshEvery    = 3 * time.Second
	// A window at or above this is left alone: at 80 ms it already moves
	// 25 MiB/s.
	refreshMaxWindow = 2 << 20
)

// stallWatch decides, from samples of a connection's statistics, when its
// sender is stuck in congestion avoidance below what the path carries.
type stallWatch struct {
	writing *atomic.Int32 // stream writes in progress on the connection

	since    time.Time // start of the current stall, zero if none
	cwnd0    uint64    // the window at since
	sent0    uint64    // BytesSent at since
	idle     int       // samples in a row with no stream writing
	lost     uint64    // PacketsLost at the last sample
	at       time.Time // time of the last sample
	refreshd time.Time // the last refresh
}

// sample takes one reading and reports whether to refresh now. A stall is
// judged over its whole length, not per sample: across a long round trip
// the window goes out in bursts (three 50 ms samples full, the fourth
// empty at 200 ms).
func (w *stallWatch) sample(now time.Time, st quic.ConnectionStats) bool {
	dt := now.Sub(w.at)
	lost := st.PacketsLost != w.lost
	w.at, w.lost = now, st.PacketsLost
	if w.writing.Load() == 0 {
		w.idle++
	} else {
		w.idle = 0
	}
	rtt, min := st.SmoothedRTT, st.MinRTT
	queue := rtt > min+max(min/8, 4*time.Millisecond)
	if rtt <= 0 || min <= 0 || dt <= 0 || dt > 4*refreshTick ||
		lost || queue || w.idle > 1 || st.CongestionWindow >= refreshMaxWindow {
		w.since = time.Time{}
		return false
	}
	if w.since.IsZero() {
		if w.idle == 0 {
			w.since, w.cwnd0, w.sent0 = now, st.CongestionWindow, st.BytesSent
		}
		return false
	}
	stall := now.Sub(w.since)
	if stall < refreshMinStall || stall < refreshMinRTTs*rtt {
		return false
	}
	// A full window per round trip, on average (the pacer sends up to
	// 1.25 of it; the ACKs the connection sends count too, hence the
	// margin).
	full := float64(st.BytesSent-w.sent0) >= 0.6*float64(w.cwnd0)*float64(stall)/float64(rtt)
	grew := st.CongestionWindow*2 > w.cwnd0*3 // by half: slow start (it doubles per round trip)
	if !full || grew || now.Sub(w.refreshd) < refreshEvery {
		w.since, w.cwnd0, w.sent0 = now, st.CongestionWindow, st.BytesSent
		return false
	}
	w.since, w.refreshd = time.Time{}, now
	return true
}

// writers counts the stream writes in progress on one connection and
// wakes its watcher when the first begins, so that an idle session costs
// no timer.
type writers struct {
	n    atomic.Int32
	wake chan struct{}
}

func newWriters() *writers { return &writers{wake: make(chan struct{}, 1)} }

func (w *writers) begin() {
	if w.n.Add(1) == 1 {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

func (w *writers) end() { w.n.Add(-1) }

// watchWindow samples c while streams write on it, until it ends, and
// calls refresh when its sender stalls.
func watchWindow(c *quic.Conn, ws *writers, refresh func()) {
	w := &stallWatch{writing: &ws.n}
	t := time.NewTicker(refreshTick)
	idle := 5 // start asleep
	for {
		if idle > 4 { // no writer for four ticks: sleep until one begins
			t.Stop()
			select {
			case <-c.Context().Done():
				return
			case <-ws.wake:
			}
			idle = 0
			w.at, w.since = time.Time{}, time.Time{}
			t.Reset(refreshTick)
		}
		select {
		case <-c.Context().Done():
			t.Stop()
			return
		case now := <-t.C:
			if ws.n.Load() == 0 {
				idle++
			} else {
				idle = 0
			}
			if w.sample(now, c.ConnectionStats()) {
				refresh()
			}
		case <-ws.wake:
		}
	}
}

// The gateway's request: one byte on the unidirectional stream it opens.
const refreshRequest = 'r'

// serverRefresh asks the client for a refresh; a client that allows no
// unidirectional stream (older versions) is not asked.
type serverRefresh struct {
	c    *quic.Conn
	done func() // QUICConfig.OnWindowRefresh, may be nil
	mu   sync.Mutex
	s    *quic.SendStream
	dead bool
}

func (r *serverRefresh) request() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead {
		return
	}
	if r.s == nil {
		s, err := r.c.OpenUniStream()
		if err != nil {
			r.dead = true
			return
		}
		r.s = s
	}
	r.s.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := r.s.Write([]byte{refreshRequest}); err != nil {
		r.dead = true
		return
	}
	if r.done != nil {
		r.done()
	}
}

// clientPaths refreshes a client connection's path: a new UDP socket,
// probed, then switched to. It alternates between two such paths, so a
// session holds at most three sockets (the first one stays: quic-go closes
// a connection with the transport it was dialed on).
type clientPaths struct {
	c     *quic.Conn
	laddr *net.UDPAddr
	cfg   QUICConfig

	mu     sync.Mutex // one refresh at a time
	paths  [2]*quic.Path
	trs    [2]*quic.Transport
	udps   [2]*net.UDPConn
	next   int
	last   time.Time     // the last switch
	minGap time.Duration // between two switches
	closed bool
	count  atomic.Int64 // refreshes done (for tests and metrics)
}

func (p *clientPaths) refresh() {
	if !p.mu.TryLock() {
		return
	}
	defer p.mu.Unlock()
	if p.closed || time.Since(p.last) < p.minGap {
		return
	}
	i := p.next
	if p.paths[i] == nil {
		udp, err := net.ListenUDP("udp", p.laddr)
		if err != nil {
			return
		}
		pc := p.cfg.packetConn(udp, false)
		tr := &quic.Transport{Conn: pc}
		path, err := p.c.AddPath(tr)
		if err != nil {
			tr.Close()
			udp.Close()
			return
		}
		p.paths[i], p.trs[i], p.udps[i] = path, tr, udp
	}
	ctx, cancel := context.WithTimeout(p.c.Context(), 2*time.Second)
	defer cancel()
	if err := p.paths[i].Probe(ctx); err != nil {
		return
	}
	if err := p.paths[i].Switch(); err != nil {
		return
	}
	p.next, p.last = 1-i, time.Now()
	p.count.Add(1)
	if p.cfg.OnWindowRefresh != nil {
		p.cfg.OnWindowRefresh()
	}
}

// listenRequests reads the gateway's refresh requests until the
// connection ends.
func (p *clientPaths) listenRequests() {
	s, err := p.c.AcceptUniStream(p.c.Context())
	if err != nil {
		return
	}
	var b [16]byte
	for {
		n, err := s.Read(b[:])
		if n > 0 {
			go p.refresh() // at most one at a time, and one per minGap
		}
		if err != nil {
			return
		}
	}
}

// close releases the extra sockets once the connection has ended.
func (p *clientPaths) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for i, tr := range p.trs {
		if tr != nil {
			tr.Close()
			p.udps[i].Close()
		}
	}
}
