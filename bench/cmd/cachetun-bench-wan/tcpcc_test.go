package main

import (
	"context"
	"log"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/cachetun/cachetun/bench/linkemu"
)

// TestSetTCPCC: -tcp-cc reno sets Reno in both namespaces and the report
// names it; without the flag the report names what the namespaces
// inherited; an algorithm the host does not allow namespaces fails with
// the sysctl that allows it.
func TestSetTCPCC(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test creates network namespaces (CI runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("needs ip: %v", err)
	}
	id := strconv.Itoa(os.Getpid())
	w := &wan{ctx: context.Background(), log: log.New(os.Stderr, "", 0),
		laptop: "cctest-laptop-" + id, gateway: "cctest-gw-" + id}
	for _, ns := range []string{w.laptop, w.gateway} {
		if err := linkemu.AddNetns(ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = linkemu.DelNetns(ns) })
	}
	read := func(ns string) string {
		cc, err := w.tcpCCOf(ns)
		if err != nil {
			t.Fatal(err)
		}
		return cc
	}
	inherited := read(w.gateway)
	if err := w.setTCPCC(); err != nil {
		t.Fatal(err)
	}
	if w.tcpCC != inherited {
		t.Fatalf("without -tcp-cc the report names %q, the namespaces use %q", w.tcpCC, inherited)
	}

	allowed, err := os.ReadFile("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(" "+string(allowed)+" ", " reno ") {
		t.Skipf("the host lets namespaces set only %q", strings.TrimSpace(string(allowed)))
	}
	w.tcpCC = "reno"
	if err := w.setTCPCC(); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{w.laptop, w.gateway} {
		if got := read(ns); got != "reno" {
			t.Errorf("-tcp-cc reno: namespace %s runs %q", ns, got)
		}
	}
	if !strings.Contains(w.report(), "TCP congestion control in both namespaces: reno") {
		t.Error("the report does not name the TCP congestion control")
	}

	w.tcpCC = "no-such-cc"
	err = w.setTCPCC()
	if err == nil || !strings.Contains(err.Error(), "tcp_allowed_congestion_control") {
		t.Fatalf("-tcp-cc no-such-cc: %v, want an error naming tcp_allowed_congestion_control", err)
	}
}
