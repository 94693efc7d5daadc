package tunnel

import (
	"net"
	"net/netip"
)

// exactNetwork returns network+"4" ("tcp4", "udp4") when addr's host is an
// IPv4 address, so that a listener binds exactly what the config names:
// Go's "tcp" and "udp" bind "0.0.0.0:4433" as [::]:4433, IPv6 included,
// wider than asked. Anything else (":4433", "[::]:4433", a host name)
// keeps network.
func exactNetwork(network, addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return network
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
		return network + "4"
	}
	return network
}
