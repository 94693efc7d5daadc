package main

import (
	"slices"
	"time"
)

// Round trips per path, from runs on this 2-core machine: to the first
// reply after the tunnel process starts (ssh's key exchange and auth take
// a dozen), and per new connection + PING.
var pathRTTs = map[string]struct{ first, newConn float64 }{
	pathDirect: {2, 2}, pathSSHL: {14, 3}, pathQUIC: {3, 1}, pathTLS: {4, 1}, pathSSH: {12, 2},
}

// estimate returns the expected length of a run and its bound when every
// transfer is cut at bulkCap. Per path and round: start and stop (0.3 s),
// the first reply, 5 new connections + PING, GET -c 50 (get50Dur and
// about 6 RTT of redis-benchmark's set-up), the transfers' greeting (4
// RTT) and the three transfers (32, 32 and 64 MiB) at a share of the
// link's ceiling (TCP paths reached 40-60 % at 0 % loss, 30-50 % at 1 %),
// none longer than bulkCap, and after a cut GET or SET the wait for a
// quiet link (about an RTT and 0.5 s, at most 2 s). QUIC at 1 % loss
// moved about 1 MiB/s, so its transfers count as cut.
func estimate(links []link, paths []string, workloads []string, rounds int, get50Dur, bulkCap time.Duration) (typical, most time.Duration) {
	sizes := map[string]float64{wGetBig: bigSize, wSetBig: bigSize, wBulk8: bulkConns * bulkSize}
	var t, m float64
	for _, l := range links {
		rtt := l.rtt.Seconds()
		ceiling := float64(l.rate) / 8 * 1448 / 1500
		share := 0.45
		if l.loss > 0 {
			share = 0.35
		}
		for _, p := range paths {
			fixed := 0.3 + pathRTTs[p].first*rtt
			if slices.Contains(workloads, wNewConn) {
				fixed += 5 * pathRTTs[p].newConn * rtt
			}
			if slices.Contains(workloads, wGet50) {
				fixed += get50Dur.Seconds() + 6*rtt
			}
			pt, pm := fixed, fixed
			for _, k := range []string{wGetBig, wSetBig, wBulk8} {
				if !slices.Contains(workloads, k) {
					continue
				}
				pt += 4 * rtt / 3 // a third of the greeting each
				pm += 4*rtt/3 + bulkCap.Seconds()
				d := sizes[k]/(share*ceiling) + 3*rtt
				if l.loss > 0 && p == pathQUIC {
					d = bulkCap.Seconds()
				}
				pt += min(d, bulkCap.Seconds())
				if d > bulkCap.Seconds() && k != wBulk8 {
					pt += rtt + 0.5 // the wait for a quiet link after a cut
				}
				if k != wBulk8 {
					pm += 2
				}
			}
			t += pt
			m += pm
		}
	}
	const setup = 5 // s: namespaces, redis-server and its values, sshd, gateway
	sec := func(s float64) time.Duration {
		return time.Duration((s*float64(rounds) + setup) * float64(time.Second))
	}
	return sec(t), sec(m)
}
