package server

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/cachetun/cachetun/control"
)

// Admission of unauthenticated clients and the failed-authentication
// budget, both per source: an IPv4 address, or an IPv6 /64 (what one
// customer of a hosting provider usually gets, so counting IPv6 per
// address would let one client take 2^64 budgets).
//
// Unauthenticated means: a TCP connection in its TLS or SSH handshake, a
// QUIC handshake, or a QUIC/TLS session that has not yet sent a verified
// Hello. Each holds one slot of its source, at most
// limits.unauthenticated_per_source at once, and one of the gateway's, at
// most limits.max_unauthenticated. Beyond either, a new connection is
// closed at once, never queued, so a flood from one source cannot keep
// other sources out, and a flood from many cannot make the gateway hold
// more than max_unauthenticated handshakes' worth of memory.

// sourceOf returns the source a remote IP counts against: the address
// itself for IPv4 (and IPv4-mapped IPv6), its /64 for IPv6.
func sourceOf(ip net.IP) netip.Prefix {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Prefix{}
	}
	a = a.Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

// sourceString prints a source as clients see it: "198.51.100.27" or
// "2001:db8:1:2::/64".
func sourceString(p netip.Prefix) string {
	if !p.IsValid() {
		return "an unknown address"
	}
	if p.Addr().Is4() {
		return p.Addr().String()
	}
	return p.String()
}

// Refusals of admission.
var (
	errSourceBusy  = errors.New("too many unauthenticated connections from this source (limits.unauthenticated_per_source)")
	errGatewayBusy = errors.New("too many unauthenticated connections to this gateway (limits.max_unauthenticated)")
)

// admission counts the unauthenticated connections per source.
type admission struct {
	perSource, max int

	mu    sync.Mutex // guards the following
	n     map[netip.Prefix]int
	total int
}

func newAdmission(perSource, max int) *admission {
	return &admission{perSource: perSource, max: max, n: make(map[netip.Prefix]int)}
}

// acquire takes a slot of src; release returns it (exactly once).
func (a *admission) acquire(src netip.Prefix) (release func(), err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.total >= a.max {
		return nil, errGatewayBusy
	}
	if a.n[src] >= a.perSource {
		return nil, errSourceBusy
	}
	a.n[src]++
	a.total++
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.total--
			if a.n[src]--; a.n[src] <= 0 {
				delete(a.n, src)
			}
		})
	}, nil
}

// busy reports whether src already holds a slot, or the gateway half of
// its slots: QUIC then asks the client to prove its address (Retry) before
// the handshake, so a spoofed source address holds at most one slot of
// its victim's, for one handshake timeout.
func (a *admission) busy(src netip.Prefix) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n[src] > 0 || a.total >= a.max/2
}

// inUse returns the slots held by src and by everyone.
func (a *admission) inUse(src netip.Prefix) (int, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n[src], a.total
}

// maxFailureSources bounds the failure table: 65,536 sources at about
// 100 bytes each, some 6 MiB.
const maxFailureSources = 1 << 16

// failWindow counts the failures of one source in the minute that
// started with its first.
type failWindow struct {
	start time.Time
	n     int
}

// failureTable is the failed-authentication budget: at most limit
// failures per source in a minute that starts with the source's first
// failure; a source over it is refused until that minute ends.
//
// The table is bounded without ever being cleared for everyone: entries
// whose minute is over are evicted when room is needed, and when every
// entry is still live the new source is not tracked (its failures go
// uncounted until room frees up) rather than forgetting the sources
// already over budget. A flood that fills the table comes from
// maxFailureSources different sources, beyond what per-source limits can
// stop (see SECURITY.md).
type failureTable struct {
	limit int
	max   int
	now   func() time.Time

	mu        sync.Mutex // guards the following
	m         map[netip.Prefix]*failWindow
	untracked int // failures not counted because the table was full
}

func newFailureTable(limit int) *failureTable {
	return &failureTable{limit: limit, max: maxFailureSources, now: time.Now, m: make(map[netip.Prefix]*failWindow)}
}

// add counts one failure of src; it reports false when the table was full
// and src is not tracked.
func (f *failureTable) add(src netip.Prefix) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	w := f.m[src]
	if w != nil && now.Sub(w.start) < time.Minute {
		w.n++
		return true
	}
	if w == nil && len(f.m) >= f.max {
		for k, v := range f.m {
			if now.Sub(v.start) >= time.Minute {
				delete(f.m, k)
			}
		}
		if len(f.m) >= f.max {
			f.untracked++
			return false
		}
	}
	f.m[src] = &failWindow{start: now, n: 1}
	return true
}

// limited reports whether src is over its budget and, if so, how long
// until its minute ends.
func (f *failureTable) limited(src netip.Prefix) (bool, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.m[src]
	if w == nil {
		return false, 0
	}
	left := time.Minute - f.now().Sub(w.start)
	if left <= 0 {
		delete(f.m, src)
		return false, 0
	}
	return w.n >= f.limit, left
}

// rateLimitMessage is what a refused client is told, on every transport.
func rateLimitMessage(src netip.Prefix, retry time.Duration) string {
	return fmt.Sprintf(control.RateLimitedPrefix+"%s: retry in %d s", sourceString(src), int((retry+time.Second-1)/time.Second))
}
