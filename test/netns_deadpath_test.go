package test

// Issue 12's rows on dead paths, failover and drain, in the network
// namespace test bed (netns_test.go) with the real gateway and connect
// processes: what new connections do after the event, on every transport.
// Whether the connection held across the event is kept is resumption's
// part; these tests state the new-connection bounds.

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNet_UDPDropped_NewConnections: "UDP dropped from now on, TCP still
// passes": new connections work within 5 s of the drop on every transport
// (quic is auto: the dead QUIC session is replaced over TLS).
func TestNet_UDPDropped_NewConnections(t *testing.T) {
	requireRoot(t)
	r := newNetRig(t, 1, nil)
	for _, tr := range netTransports {
		t.Run(tr.Name, func(t *testing.T) {
			c := r.Connect(t, tr.Name)
			defer c.Stop()
			if !ping(r.netBed, c.Local, 5*time.Second) {
				t.Fatal("no PING through the tunnel before the drop")
			}
			undo := r.DropUDP()
			defer undo()
			took, ok := newConnAfter(r.netBed, c.Local, 5*time.Second)
			t.Logf("UDP dropped over %s: new connections work %s after (bound 5s)", tr.Name, took.Round(time.Millisecond))
			if !ok || took > 5*time.Second {
				t.Fatalf("no new connection within 5s of UDP being dropped (%s)\n%s", took.Round(time.Millisecond), c.Output())
			}
		})
	}
}

// TestNet_Failover_GatewayKilled: "two gateways listed, the one in use
// dies" (SIGKILL: a TLS or SSH peer gets a reset, a QUIC one silence):
// new connections work through the other within 2 s.
func TestNet_Failover_GatewayKilled(t *testing.T) {
	requireRoot(t)
	for _, tr := range netTransports {
		t.Run(tr.Name, func(t *testing.T) {
			r := newNetRig(t, 2, nil)
			c := r.Connect(t, tr.Name)
			defer c.Stop()
			first := r.Gateways[0].ServerAddr(tr.Name)
			if !strings.Contains(c.Output(), first) || !ping(r.netBed, c.Local, 5*time.Second) {
				t.Fatalf("not connected through the first gateway %s:\n%s", first, c.Output())
			}
			r.Gateways[0].Signal(t, syscall.SIGKILL)
			<-r.Gateways[0].Exited()
			took, ok := newConnAfter(r.netBed, c.Local, 2*time.Second)
			t.Logf("first gateway killed over %s: new connections work through the other %s after (bound 2s)", tr.Name, took.Round(time.Millisecond))
			if !ok || took > 2*time.Second {
				t.Fatalf("no new connection within 2s of the gateway in use being killed (%s)\n%s", took.Round(time.Millisecond), c.Output())
			}
		})
	}
}

// TestNet_Drain_NewConnectionsMove: SIGTERM on the gateway in use (with a
// connection open through it, so the drain lasts drain_timeout, 3 s): its
// GoAway moves new connections to the other listed gateway within 2 s,
// not after the drain; the held connection is closed at drain_timeout.
func TestNet_Drain_NewConnectionsMove(t *testing.T) {
	requireRoot(t)
	for _, tr := range netTransports {
		t.Run(tr.Name, func(t *testing.T) {
			r := newNetRig(t, 2, nil)
			c := r.Connect(t, tr.Name)
			defer c.Stop()
			h := openHeld(t, r.netBed, c.Local)
			if !h.Request(5 * time.Second) {
				t.Fatalf("request on the held connection: %s", h.Lost())
			}
			start := time.Now()
			r.Gateways[0].Signal(t, syscall.SIGTERM)
			took, ok := newConnAfter(r.netBed, c.Local, 2*time.Second)
			t.Logf("drain over %s: new connections work %s after SIGTERM (bound 2s; drain_timeout 3s)", tr.Name, took.Round(time.Millisecond))
			if !ok || took > 2*time.Second {
				t.Fatalf("no new connection within 2s of the drain (%s)\n%s", took.Round(time.Millisecond), c.Output())
			}
			select {
			case <-r.Gateways[0].Exited():
				t.Fatal("the draining gateway exited before drain_timeout with a connection open")
			default:
			}
			select {
			case <-r.Gateways[0].Exited():
			case <-time.After(10 * time.Second):
				t.Fatal("the draining gateway did not exit within 10s")
			}
			if h.Request(5*time.Second) || h.Kept() {
				t.Fatal("the held connection still works after the drain ended")
			}
			t.Logf("the held connection ended %s after SIGTERM: %s", time.Since(start).Round(time.Millisecond), h.Lost())
		})
	}
}
