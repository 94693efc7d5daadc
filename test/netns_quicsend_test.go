package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNet_QUICGatewaySendErrors: the real gateway process keeps a QUIC
// session, and the connection held through it, while its own sends fail:
// an iptables OUTPUT DROP of UDP in the gateway namespace for 1.5 s hands
// its sendmsg EPERM (deliberately on OUTPUT here: that is the error this
// test wants; the other rows drop on INPUT). A request sent during it is
// answered after it, and the gateway counts the packets it took as lost in
// cachetun_quic_send_errors_total{errno="EPERM"} and logs it once.
func TestNet_QUICGatewaySendErrors(t *testing.T) {
	b := newNetBed(t)
	redis := b.StartRedis(t)
	k := newKey(t, "laptop")
	g := b.StartGateway(t, netGatewayPort, netGatewaySSHPort, gatewayProcOpts{
		Targets:    map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", redis)},
		Authorized: []string{k.Line},
		Extra:      "metrics: \"127.0.0.1:0\"\n",
	})
	known := writeKnownHostsLines(t, []string{knownHostsLine(g.Addr, g.HostKey)})
	c := b.StartConnect(t, "quic", "cache", k, known, netLocalPort, g.Addr)
	h := openHeld(t, b, c.Local)
	if before := gatewaySendErrors(t, b, g, "EPERM"); before != 0 {
		t.Fatalf("send errors before the event: %g", before)
	}

	// Shorter than the client's dead-path detection (dead_after 2 s, then
	// 1 s for the probe's answer), which would replace a session silent
	// for longer: this test is about the gateway's QUIC layer, which
	// without the wrapper ends the session at the first EPERM.
	const outage = 1500 * time.Millisecond
	rule := []string{"OUTPUT", "-o", b.GatewayDev, "-p", "udp", "-j", "DROP"}
	b.mustIn(b.Gateway, append([]string{"iptables", "-w", "5", "-I"}, rule...)...)
	removed := false
	remove := func() {
		if !removed {
			removed = true
			b.mustIn(b.Gateway, append([]string{"iptables", "-w", "5", "-D"}, rule...)...)
		}
	}
	t.Cleanup(remove)
	start := time.Now()
	if !h.Send() {
		t.Fatalf("send during the outage: %s", h.Lost())
	}
	time.Sleep(time.Until(start.Add(outage))) // the event lasts this long by design
	remove()
	ended := time.Now()
	if !h.Receive(15 * time.Second) {
		t.Fatalf("the held connection was lost: %s\nconnect:\n%s", h.Lost(), c.Output())
	}
	t.Logf("the request sent during %v of EPERM on the gateway's sends was answered %v after it",
		outage, time.Since(ended).Round(time.Millisecond))
	if !h.Request(5 * time.Second) {
		t.Fatalf("request after the outage: %s", h.Lost())
	}
	n := gatewaySendErrors(t, b, g, "EPERM")
	if n < 1 {
		t.Fatalf("cachetun_quic_send_errors_total{errno=EPERM} = %g, want at least 1", n)
	}
	if got := strings.Count(g.Log(), "a packet could not be sent"); got != 1 {
		t.Errorf("the gateway logged the failed sends %d times, want once (one line per errno per 10 s)\n%s", got, g.Log())
	}
	if strings.Contains(c.Output(), "session to gateway lost") {
		t.Errorf("the client lost its session:\n%s", c.Output())
	}
	t.Logf("cachetun_quic_send_errors_total{errno=EPERM} = %g", n)
}

// gatewaySendErrors scrapes cachetun_quic_send_errors_total{errno} from
// the gateway's metrics listener, which is on the loopback of the gateway
// namespace.
func gatewaySendErrors(t testing.TB, b *netBed, g *gatewayProc, errno string) float64 {
	t.Helper()
	m := metricsAddrRE.FindStringSubmatch(g.Log())
	if m == nil {
		t.Fatalf("the gateway logged no metrics address:\n%s", g.Log())
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) {
			return dialInNetns(b.Gateway, network, addr, 5*time.Second)
		},
	}}
	resp, err := hc.Get("http://" + m[1] + "/metrics")
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	prefix := `cachetun_quic_send_errors_total{errno="` + errno + `"} `
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no series %s in the gateway's metrics", strings.TrimSpace(prefix))
	return 0
}
