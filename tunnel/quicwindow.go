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
// queue is building, so the path has room). The client then switches to a
// new path on a fresh UDP socket, which gives both ends a fresh window
// (quic-go resets the server's on the switch too). The gateway watches its
// own sender the same way and, when it stalls, asks the client to do it
// over a unidirectional stream it opens for that (one byte per request;
// see PROTOCOL.md "QUIC window refresh"). At most one refresh per
// refreshEvery; the client keeps at most two extra sockets and alternates
// between them.
//
// A window that loss has cut is not that stall, however slowly it grows:
// Reno takes 0.7 of it per loss episode, and it is what the path carries.
// A 32 MiB GET at 80 ms / 200 Mbit overshoots to 4 MiB in slow start, is
// cut to 1.5 MiB by two loss episodes and then moves 18 MiB/s; refreshing
// it there (the rule above alone did, 0.4 s after the last loss) restarted
// slow start from 38 KiB in the middle of the transfer, and the GET took
// over 3 s instead of 2 (measured in qlog traces, make bench-wan). So a
// window that lost packets since it last started afresh (at most 64 KiB: a
// new connection or a new path), that reached 256 KiB and that is still a
// quarter of its peak since then is left alone.
//
// A client can tell that stall before it shows: its window is still at its
// start (at most 64 KiB) although the gateway sent it 4 MiB or more since
// then (since the connection or the last switch), which is the download
// that raised its round trips. When such a client's own upload then fills
// that window for one sample, with the gateway quiet (under 64 KiB in that
// sample), it refreshes at once instead of after two round trips: across
// 80 ms the SET after a GET was judged 0.1 s after it began rather than
// 0.3 s (qlog traces). If quic-go had not in fact left slow start, the
// cost is the little the window had grown (it was at most 64 KiB) and the
// gateway's window, which sent nothing that sample.
//
// After a switch, the path to switch to next is probed ahead
// (PATH_CHALLENGE, RFC 9000 section 8.2): at once, and again when a stream
// write begins while that validation is over spareMaxAge/2 old. The next
// refresh is then the switch alone, not a round trip of probing first.
// quic-go keeps a validated path usable until it is closed (a client's
// Path.Switch needs no new probe; the server keeps the address of a probe
// it validated until the client switches); what may go stale is a NAT's
// mapping for the idle socket, hence the age bound: a spare older than
// spareMaxAge is probed again before the switch. A session that never
// switched probes nothing ahead: in quic-go v0.65 a probe while data flows
// fails the ECN validation of one end or both ("ACK contains fewer new ECN
// counts than acknowledged ECN-marked packets", TestQUIC_WrapperKeepsGSOAndECN
// with a probe at the start), and a session that never stalls should keep
// ECN; one that refreshed has probed once already.

const (
	refreshTick     = 50 * time.Millisecond
	refreshMinRTTs  = 2                      // stall length, in round trips
	refreshMinStall = 150 * time.Millisecond // and in time
	refreshEvery    = 3 * time.Second
	// A window at or above this is left alone: at 80 ms it already moves
	// 25 MiB/s.
	refreshMaxWindow = 2 << 20
	// A window at most this large has just started afresh (the initial
	// window is 40 KiB, 38 KiB on a new path).
	refreshFreshWindow = 64 << 10
	// A window cut by loss since it started afresh is left alone if it
	// reached refreshLossPeak and is at least 1/refreshLossShare of its
	// peak since then.
	refreshLossPeak  = 256 << 10
	refreshLossShare = 4
	// A client whose window is still fresh after receiving this much
	// refreshes as soon as its upload fills that window, if it received
	// less than refreshFastQuiet in that sample.
	refreshFastReceived = 4 << 20
	refreshFastQuiet    = 64 << 10
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

	peak uint64 // the largest window since it last started afresh
	cut  bool   // a packet was lost since then

	switches *atomic.Int64 // the client's path switches (nil on a server)
	nswitch  int64         // switches at the last sample
	rx0      uint64        // BytesReceived at the last switch or when the window was last above refreshFreshWindow
	rx       uint64        // BytesReceived at the last sample
}

// sample takes one reading and reports whether to refresh now. A stall is
// judged over its whole length, not per sample: across a long round trip
// the window goes out in bursts (three 50 ms samples full, the fourth
// empty at 200 ms).
func (w *stallWatch) sample(now time.Time, st quic.ConnectionStats) bool {
	dt := now.Sub(w.at)
	lost := st.PacketsLost != w.lost
	rxTick := st.BytesReceived - w.rx
	w.at, w.lost, w.rx = now, st.PacketsLost, st.BytesReceived
	if w.switches != nil {
		if n := w.switches.Load(); n != w.nswitch {
			w.nswitch, w.rx0 = n, st.BytesReceived
		}
	}
	if st.CongestionWindow > refreshFreshWindow {
		w.rx0 = st.BytesReceived
	} else { // started afresh: no peak, no loss yet
		w.peak, w.cut = 0, false
	}
	if w.writing.Load() == 0 {
		w.idle++
	} else {
		w.idle = 0
	}
	w.peak = max(w.peak, st.CongestionWindow)
	w.cut = w.cut || lost
	if w.cut && w.peak >= refreshLossPeak && st.CongestionWindow*refreshLossShare >= w.peak {
		w.since = time.Time{} // what the path carries, found by loss
		return false
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
	fast := w.switches != nil && w.idle == 0 && st.CongestionWindow <= refreshFreshWindow &&
		st.BytesReceived-w.rx0 >= refreshFastReceived && rxTick < refreshFastQuiet
	if !fast && (stall < refreshMinStall || stall < refreshMinRTTs*rtt) {
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
func watchWindow(c *quic.Conn, ws *writers, switches *atomic.Int64, refresh, wake func()) {
	w := &stallWatch{writing: &ws.n, switches: switches}
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
			if wake != nil {
				wake()
			}
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
// a connection with the transport it was dialed on). After the first
// switch, the path to switch to next is probed ahead, so that a refresh is
// a switch at once rather than a round trip of probing first; one
// validated more than spareMaxAge ago (a NAT may have dropped its mapping)
// is probed again first.
type clientPaths struct {
	c     *quic.Conn
	laddr *net.UDPAddr
	cfg   QUICConfig

	mu     sync.Mutex // one refresh at a time
	spares [2]spare
	next   int
	last   time.Time     // the last switch
	minGap time.Duration // between two switches
	closed bool
	count  atomic.Int64 // refreshes done (for tests and metrics)
}

// spare is one of a client's extra paths.
type spare struct {
	path    *quic.Path
	tr      *quic.Transport
	udp     *net.UDPConn
	probing chan struct{} // closed when the probe in flight ends; nil if none
	valid   atomic.Int64  // when the last probe succeeded (UnixNano), 0 if it failed
}

// spareMaxAge is how long a probed path is taken as still usable: well
// under the 30 s after which many NATs drop an idle UDP mapping.
const spareMaxAge = 20 * time.Second

// prepare makes sure spare i exists and, unless it was validated less
// than fresh ago or is being probed, starts probing it. It is called with
// p.mu held.
func (p *clientPaths) prepare(i int, fresh time.Duration) bool {
	s := &p.spares[i]
	if p.closed {
		return false
	}
	if s.path == nil {
		udp, err := net.ListenUDP("udp", p.laddr)
		if err != nil {
			return false
		}
		tr := &quic.Transport{Conn: p.cfg.packetConn(udp, false)}
		path, err := p.c.AddPath(tr)
		if err != nil {
			tr.Close()
			udp.Close()
			return false
		}
		s.path, s.tr, s.udp = path, tr, udp
	}
	if s.probing != nil {
		select {
		case <-s.probing:
			s.probing = nil
		default:
			return true // under way
		}
	}
	if v := s.valid.Load(); v != 0 && time.Since(time.Unix(0, v)) < fresh {
		return true
	}
	done := make(chan struct{})
	s.probing = done
	s.valid.Store(0)
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(p.c.Context(), 2*time.Second)
		defer cancel()
		if s.path.Probe(ctx) == nil {
			s.valid.Store(time.Now().UnixNano())
		}
	}()
	return true
}

// warm probes the next spare ahead of need, if it is not fresh, on a
// session that has switched before (see the comment at the top).
func (p *clientPaths) warm() {
	if p.count.Load() == 0 || !p.mu.TryLock() {
		return
	}
	defer p.mu.Unlock()
	p.prepare(p.next, spareMaxAge/2)
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
	s := &p.spares[i]
	if !p.prepare(i, spareMaxAge) {
		return
	}
	if s.probing != nil {
		<-s.probing // bounded by the probe's 2 s
		s.probing = nil
	}
	if s.valid.Load() == 0 {
		return
	}
	if err := s.path.Switch(); err != nil {
		s.valid.Store(0)
		return
	}
	s.valid.Store(0) // probed again before the next switch to it
	p.next, p.last = 1-i, time.Now()
	p.count.Add(1)
	p.prepare(p.next, spareMaxAge/2)
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
	for i := range p.spares {
		if s := &p.spares[i]; s.tr != nil {
			s.tr.Close()
			s.udp.Close()
		}
	}
}
