package server

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestSourceOf: IPv4 (and IPv4-mapped IPv6) count per address, IPv6 per
// /64 (issue 10, finding 7: IPv6 was counted per address).
func TestSourceOf(t *testing.T) {
	for _, c := range []struct{ ip, want string }{
		{"198.51.100.27", "198.51.100.27/32"},
		{"::ffff:198.51.100.27", "198.51.100.27/32"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"},
		{"::1", "::/64"},
	} {
		if got := sourceOf(net.ParseIP(c.ip)); got.String() != c.want {
			t.Errorf("sourceOf(%s) = %s, want %s", c.ip, got, c.want)
		}
	}
	a := sourceOf(net.ParseIP("2001:db8:1:2::1"))
	b := sourceOf(net.ParseIP("2001:db8:1:2:8000::9"))
	if a != b {
		t.Fatalf("two addresses of one /64 are different sources: %s %s", a, b)
	}
}

// TestFailureTable_NeverClearedForEveryone: the table holds at most max
// sources; when every entry is live a new source goes untracked and the
// offenders already over budget stay refused (the old table was cleared
// for everyone at 10,000 addresses). Expired entries make room.
func TestFailureTable_NeverClearedForEveryone(t *testing.T) {
	now := time.Unix(1000, 0)
	f := newFailureTable(3)
	f.now = func() time.Time { return now }
	f.max = 100
	offender := sourceOf(net.ParseIP("198.51.100.27"))
	for range 3 {
		f.add(offender)
	}
	if lim, _ := f.limited(offender); !lim {
		t.Fatal("3 failures with limit 3: not limited")
	}
	for i := range 200 { // a flood of new sources, twice the table
		f.add(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32))
	}
	if len(f.m) > f.max {
		t.Fatalf("table holds %d sources, max %d", len(f.m), f.max)
	}
	if lim, retry := f.limited(offender); !lim || retry != time.Minute {
		t.Fatalf("offender forgotten by a flood of new sources: limited %v retry %s", lim, retry)
	}
	if f.untracked != 101 {
		t.Fatalf("untracked = %d, want 101", f.untracked)
	}
	now = now.Add(19 * time.Second)
	if _, retry := f.limited(offender); rateLimitMessage(offender, retry) != "too many failed authentications from 198.51.100.27: retry in 41 s" {
		t.Fatalf("message: %q", rateLimitMessage(offender, retry))
	}
	now = now.Add(time.Minute) // every window over: room again
	newcomer := sourceOf(net.ParseIP("2001:db8::1"))
	if !f.add(newcomer) {
		t.Fatal("expired entries did not make room")
	}
	if lim, _ := f.limited(offender); lim {
		t.Fatal("offender still limited after its minute")
	}
	if got := rateLimitMessage(newcomer, 1500*time.Millisecond); got != "too many failed authentications from 2001:db8::/64: retry in 2 s" {
		t.Fatalf("IPv6 message: %q", got)
	}
}

// TestAdmission_PerSourceAndGlobal: a source holds at most perSource
// slots, the gateway max; refusals are immediate and slots come back.
func TestAdmission_PerSourceAndGlobal(t *testing.T) {
	a := newAdmission(2, 3)
	s1 := sourceOf(net.ParseIP("127.0.0.2"))
	s2 := sourceOf(net.ParseIP("127.0.0.3"))
	r1, err1 := a.acquire(s1)
	r2, err2 := a.acquire(s1)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if _, err := a.acquire(s1); !errors.Is(err, errSourceBusy) {
		t.Fatalf("third slot of one source: %v", err)
	}
	if !a.busy(s1) || a.busy(s2) && a.total < a.max/2 {
		t.Fatal("busy is wrong")
	}
	r3, err := a.acquire(s2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.acquire(sourceOf(net.ParseIP("127.0.0.4"))); !errors.Is(err, errGatewayBusy) {
		t.Fatalf("fourth slot of the gateway: %v", err)
	}
	r1()
	r1() // idempotent
	if mine, all := a.inUse(s1); mine != 1 || all != 2 {
		t.Fatalf("after one release: source %d, gateway %d", mine, all)
	}
	r2()
	r3()
	if len(a.n) != 0 || a.total != 0 {
		t.Fatalf("slots leaked: %v %d", a.n, a.total)
	}
}

// TestServerAdmission_CountsHandshakeFailures: a failed handshake from a
// proven address counts against auth_failures_per_minute; one from a QUIC
// address no Retry proved (maybe spoofed) does not, nor does a listener
// closing; the slot comes back in every case.
func TestServerAdmission_CountsHandshakeFailures(t *testing.T) {
	cfg := DefaultConfig()
	s := &Server{log: slog.New(slog.DiscardHandler), metrics: newMetrics(false, "test"),
		adm: newAdmission(2, 10), fails: newFailureTable(2)}
	s.conf.Store(cfg)
	a := s.transportAdmission("tls")
	src := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 1}
	ip := src.IP
	for _, c := range []struct {
		verified bool
		err      error
	}{
		{false, io.EOF},       // unproven QUIC source: not counted
		{true, net.ErrClosed}, // the listener closed: not counted
		{true, nil},           // success
		{true, io.EOF},        // counted
	} {
		done, err := a.Admit(src, c.verified)
		if err != nil {
			t.Fatal(err)
		}
		done(c.err)
	}
	if lim, _ := s.rateLimited(ip); lim {
		t.Fatal("limited after one counted failure (limit 2)")
	}
	done, _ := a.Admit(src, true)
	done(errors.New("tls: handshake timeout"))
	if lim, msg := s.rateLimited(ip); !lim || !strings.HasPrefix(msg, "too many failed authentications from 192.0.2.7: retry in ") {
		t.Fatalf("two counted failures, limit 2: limited %v %q", lim, msg)
	}
	if mine, all := s.adm.inUse(sourceOf(ip)); mine != 0 || all != 0 {
		t.Fatalf("slots not returned: %d %d", mine, all)
	}
	// Over the per-source cap, Admit refuses at once.
	d1, _ := a.Admit(src, true)
	d2, _ := a.Admit(src, true)
	if _, err := a.Admit(src, true); !errors.Is(err, errSourceBusy) {
		t.Fatalf("third concurrent handshake of a source: %v", err)
	}
	if !a.RequireRetry(src) {
		t.Fatal("a busy source is not asked for a Retry")
	}
	d1(nil)
	d2(nil)
}
