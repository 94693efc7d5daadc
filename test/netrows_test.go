package test

import (
	"bufio"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The rows of issue 12's table, each on quic (the auto transport), tls
// and ssh, on the test bed of netns_test.go: one connection held open
// across the event with a request sent during it, and new connections
// measured after it.
//
// netRowReady says which cells main keeps today. A cell set false is one
// whose feature is being built: its test measures and logs what happens
// and then skips, saying so; the change that makes it pass sets it true
// (and the test then asserts it). Keep this the one table of switches.
var netRowReady = map[string]bool{
	"Loss/quic": true, "Loss/tls": true, "Loss/ssh": true,
	// QUIC migrates; TLS and SSH resume their streams on a new session
	// (the resume closes the gateway's old session, whose blocked SSH
	// channel read held the resumed stream's request back until its
	// keepalive ended it, about 30 s).
	"AddressChange/quic": true, "AddressChange/tls": true, "AddressChange/ssh": true,
	// QUIC takes the send errors as loss (tunnel/quicconn.go); TLS and
	// SSH resume.
	"NoAddress/quic": true, "NoAddress/tls": true, "NoAddress/ssh": true,
	// The request sent into the hole goes unanswered: dead-path detection
	// replaces the session 3 s in, and the stream resumes after the hole.
	"BlackHole/quic": true, "BlackHole/tls": true, "BlackHole/ssh": true,
	// QUIC: new connections move to TLS within 5 s (2.5 s measured) and
	// the held one resumes there.
	"UDPDropped/quic": true, "UDPDropped/tls": true, "UDPDropped/ssh": true,
	// A reconnect retries at least every second for its first 30 s
	// (client fastRetryMax), so the drain does not grow its backoff past
	// the 2 s bound.
	"GatewayRestart/quic": true, "GatewayRestart/tls": true, "GatewayRestart/ssh": true,
	"GatewayCrash/quic": true, "GatewayCrash/tls": true, "GatewayCrash/ssh": true,
	"TwoGateways/quic": true, "TwoGateways/tls": true, "TwoGateways/ssh": true,
}

// The bounds of issue 12.
const (
	// netReplyWait is how long after the link heals the request sent
	// during the event may take to be answered (TCP's and QUIC's
	// retransmission timers have backed off during the event).
	netReplyWait = 10 * time.Second
	// netNewConnBound: new connections work again within 5 s of the link
	// healing (or of UDP stopping, for the UDP row).
	netNewConnBound = 5 * time.Second
	// netRestartBound: the local port works again within 2 s of a new
	// gateway listening, and of the gateway in use dying when another
	// is listed.
	netRestartBound = 2 * time.Second
	// netMeasureNewConn is how long new connections are measured for, so
	// that a cell over its bound shows by how much.
	netMeasureNewConn = 10 * time.Second
)

// netNeed is what a cell must show to pass.
type netNeed struct {
	Keep      bool          // the held connection is kept
	NewWithin time.Duration // new connections work within this
}

// netCell logs a measured cell and, if the cell is ready, asserts it;
// else it skips with what happens today.
func netCell(t *testing.T, row, transport string, o netOutcome, need netNeed) {
	t.Helper()
	t.Logf("issue 12 measured: %-14s %-4s %s", row, transport, o)
	ok := (!need.Keep || o.Kept) && o.NewOK && o.NewTook <= need.NewWithin
	cell := row + "/" + transport
	ready, known := netRowReady[cell]
	if !known {
		t.Fatalf("no netRowReady entry for %s", cell)
	}
	if !ready {
		what := "not yet kept"
		if !need.Keep {
			what = fmt.Sprintf("new connections not yet within %v", need.NewWithin)
		}
		if ok {
			t.Skipf("issue 12: %s on %s %s: %s (this now passes: set netRowReady[%q] = true)", row, transport, what, o, cell)
		}
		t.Skipf("issue 12: %s on %s %s: %s", row, transport, what, o)
	}
	if need.Keep && !o.Kept {
		t.Errorf("%s on %s: the held connection was lost (%s); issue 12 keeps it", row, transport, o.Lost)
	}
	if !o.NewOK || o.NewTook > need.NewWithin {
		t.Errorf("%s on %s: %s; issue 12 wants new connections within %v", row, transport, o, need.NewWithin)
	}
}

// netClient is one transport's client and its held connection.
type netClient struct {
	Transport string
	C         *netConnect
	H         *heldConn
	O         netOutcome
}

// netClients starts a client per transport, side by side (each on its
// own local port, each its own process and session), and opens the held
// connection through each: one event is then measured on all three at
// once, which changes nothing that is measured and saves the event's
// length twice over.
func netClients(t *testing.T, r *netRig) []*netClient {
	t.Helper()
	var cs []*netClient
	for _, tr := range netTransports {
		c := r.Connect(t, tr.Name)
		cs = append(cs, &netClient{Transport: tr.Name, C: c, H: openHeld(t, r.netBed, c.Local)})
	}
	return cs
}

// netSend sends the request during the event on every held connection.
func netSend(cs []*netClient) {
	for _, c := range cs {
		c.H.Send()
	}
}

// netAfter measures every client at once: new connections from now (up
// to netMeasureNewConn), and, at the same time, the held connection's
// reply (up to replyWait) and one request more.
func netAfter(r *netRig, cs []*netClient, replyWait time.Duration) {
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(2)
		var took time.Duration
		var ok bool
		go func() {
			defer wg.Done()
			took, ok = newConnAfter(r.netBed, c.C.Local, netMeasureNewConn)
		}()
		go func() {
			defer wg.Done()
			if c.H.Receive(replyWait) {
				c.H.Request(5 * time.Second)
			}
		}()
		defer func() { c.O = netOutcome{Kept: c.H.Kept(), Lost: c.H.Lost(), NewOK: ok, NewTook: took} }()
	}
	wg.Wait()
}

// netEvent runs one event under a client per transport: it holds a
// connection on each, calls start (which begins the event and returns
// heal, nil for an event that is over at once), sends the request after
// before, heals after more, and measures.
func netEvent(t *testing.T, r *netRig, before, after time.Duration, start func() (heal func())) []*netClient {
	t.Helper()
	cs := netClients(t, r)
	heal := start()
	time.Sleep(before) // the event's own length: nothing to wait on
	netSend(cs)
	time.Sleep(after)
	if heal != nil {
		heal()
	}
	netAfter(r, cs, netReplyWait)
	for _, c := range cs {
		c.C.Stop()
	}
	return cs
}

// netCells reports each transport's cell of row as a subtest.
func netCells(t *testing.T, r *netRig, row string, cs []*netClient, need netNeed) {
	t.Helper()
	for _, c := range cs {
		t.Run(c.Transport, func(t *testing.T) {
			if !c.O.Kept || !c.O.NewOK {
				t.Logf("the client's last log lines:\n%s", lastLines(c.C.Output(), 15))
			}
			if !c.O.Kept {
				// Where the held request went: counted by redis (the reply
				// was lost) or not (the request was).
				t.Logf("redis counts %s on the held connection; the probe had %d replies", r.redisGet(c.H.key), c.H.n)
			}
			netCell(t, row, c.Transport, c.O, need)
		})
	}
}

// TestNet_Loss: 5 % of packets dropped each way (on INPUT at both ends)
// while 20,000 requests go over the held connection in pipelined batches
// of 50, within 60 s per transport; every reply must be the next count
// (nothing lost, repeated or reordered), and new connections work
// during the loss within 10 s.
func TestNet_Loss(t *testing.T) {
	const (
		requests = 20000
		batch    = 50
		limit    = 60 * time.Second
	)
	r := newNetRig(t, 1, nil)
	for _, tr := range netTransports {
		t.Run(tr.Name, func(t *testing.T) {
			c := r.Connect(t, tr.Name)
			defer c.Stop()
			h := openHeld(t, r.netBed, c.Local)
			undo := r.Loss(0.05)
			defer undo()
			start := time.Now()
			done := 0
			for done < requests && h.Kept() && time.Since(start) < limit {
				n := min(batch, requests-done)
				if !h.Pipeline(n, limit-time.Since(start)) {
					break
				}
				done += n
			}
			took := time.Since(start)
			newTook, newOK := newConnAfter(r.netBed, c.Local, netMeasureNewConn)
			dl, dg := r.Dropped()
			undo()
			t.Logf("the loss rules dropped %d packets arriving at the laptop and %d at the gateway", dl, dg)
			if dl == 0 || dg == 0 {
				t.Fatalf("the loss rules dropped %d packets at the laptop and %d at the gateway: no loss each way", dl, dg)
			}
			o := netOutcome{Kept: h.Kept() && done == requests, Lost: h.Lost(), NewOK: newOK, NewTook: newTook}
			if h.Kept() && done < requests {
				o.Lost = fmt.Sprintf("only %d of %d requests within %v", done, requests, limit)
			}
			t.Logf("%d requests with 5%% loss each way in %.1fs", done, took.Seconds())
			netCell(t, "Loss", tr.Name, o, netNeed{Keep: true, NewWithin: 10 * time.Second})
		})
	}
}

// TestNet_AddressChange: the laptop gets a new address and loses the old
// one (Wi-Fi roam); a request is sent right after.
func TestNet_AddressChange(t *testing.T) {
	r := newNetRig(t, 1, nil)
	cs := netEvent(t, r, 0, 0, func() func() {
		r.ChangeAddress()
		return nil
	})
	netCells(t, r, "AddressChange", cs, netNeed{Keep: true, NewWithin: netNewConnBound})
}

// TestNet_NoAddress: the laptop has no address for 4 s (every send fails
// with ENETUNREACH), then a new one; the request is sent 2 s in.
func TestNet_NoAddress(t *testing.T) {
	r := newNetRig(t, 1, nil)
	cs := netEvent(t, r, 2*time.Second, 2*time.Second, func() func() {
		r.RemoveAddress()
		return func() { r.AddAddress() }
	})
	netCells(t, r, "NoAddress", cs, netNeed{Keep: true, NewWithin: netNewConnBound})
}

// TestNet_BlackHole: nothing passes either way for 20 s, with no error
// to any sender (a train tunnel); the request is sent 10 s in. The
// unanswered request makes dead-path detection replace the session
// (whatever the keepalives' phase), so the stream is kept only if it
// resumes on the new session once the hole ends.
func TestNet_BlackHole(t *testing.T) {
	r := newNetRig(t, 1, nil)
	cs := netEvent(t, r, 10*time.Second, 10*time.Second, func() func() {
		return r.BlackHole()
	})
	netCells(t, r, "BlackHole", cs, netNeed{Keep: true, NewWithin: netNewConnBound})
}

// TestNet_UDPDropped: from now on UDP is dropped both ways and TCP still
// passes (a hotel network); the request is sent 1 s in, and new
// connections are measured from the moment UDP stopped.
func TestNet_UDPDropped(t *testing.T) {
	r := newNetRig(t, 1, nil)
	var undo func()
	cs := netEvent(t, r, time.Second, 0, func() func() {
		undo = r.DropUDP()
		return nil
	})
	undo()
	for _, c := range cs {
		c.O.NewTook += time.Second // measured from 1 s in: count from the drop
	}
	netCells(t, r, "UDPDropped", cs, netNeed{Keep: true, NewWithin: netNewConnBound})
}

// netRestart stops the gateway with sig under a client per transport,
// waits for it to exit (15 s at most), sends the request while it is
// down, starts it again on the same ports and measures new connections
// from its "gateway ready".
func netRestart(t *testing.T, r *netRig, sig syscall.Signal) []*netClient {
	t.Helper()
	cs := netClients(t, r)
	g := r.Gateways[0]
	g.Signal(t, sig)
	select {
	case <-g.Exited():
	case <-time.After(15 * time.Second):
		t.Fatalf("gateway still running 15s after %v", sig)
	}
	netSend(cs)
	g.Restart(t)
	netAfter(r, cs, 5*time.Second)
	return cs
}

// TestNet_GatewayRestart: SIGTERM (a drain; drain_timeout 3 s) and a new
// gateway on the same ports: the open connection may end, the local port
// works again within 2 s of the new gateway being ready.
func TestNet_GatewayRestart(t *testing.T) {
	r := newNetRig(t, 1, nil)
	netCells(t, r, "GatewayRestart", netRestart(t, r, syscall.SIGTERM), netNeed{NewWithin: netRestartBound})
}

// TestNet_GatewayCrash: SIGKILL and a new gateway on the same ports: as
// the restart.
func TestNet_GatewayCrash(t *testing.T) {
	r := newNetRig(t, 1, nil)
	netCells(t, r, "GatewayCrash", netRestart(t, r, syscall.SIGKILL), netNeed{NewWithin: netRestartBound})
}

// TestNet_TwoGateways: two gateways listed, the one in use (the first)
// is killed: new connections work through the second within 2 s.
func TestNet_TwoGateways(t *testing.T) {
	r := newNetRig(t, 2, nil)
	g := r.Gateways[0]
	cs := netClients(t, r)
	for _, c := range cs {
		if want := g.ServerAddr(c.Transport); !strings.Contains(c.C.Output(), want) {
			t.Fatalf("cachetun connect over %s is not on the first gateway %s:\n%s", c.Transport, want, c.C.Output())
		}
	}
	g.Signal(t, syscall.SIGKILL)
	select {
	case <-g.Exited():
	case <-time.After(15 * time.Second):
		t.Fatal("gateway still running 15s after SIGKILL")
	}
	netSend(cs)
	netAfter(r, cs, 5*time.Second)
	netCells(t, r, "TwoGateways", cs, netNeed{NewWithin: netRestartBound})
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// redisGet reads key from the gateway namespace's redis-server.
func (r *netRig) redisGet(key string) string {
	c, err := r.DialGateway(r.Redis, 2*time.Second)
	if err != nil {
		return fmt.Sprintf("(dial redis: %v)", err)
	}
	defer c.Close()
	v, err := respDo(c, bufio.NewReader(c), 2*time.Second, "GET", key)
	if err != nil {
		return fmt.Sprintf("(GET %s: %v)", key, err)
	}
	return v
}
