package server

// Where discovered nodes may live. A node that a cache announces (CLUSTER
// SHARDS or SLOTS, an ElastiCache node list) is an address a user of the
// target can choose: a node she runs answers CONFIG SET
// cluster-announce-ip. So before the gateway dials one, its IP must lie in
// the target's networks (Target.Networks, or defaultNetworks), and never
// in the ranges of netPolicy.check that no configuration admits.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// defaultNetworks are the networks of a target that names none: the
// private ranges where VPCs put their caches (RFC 1918, the CGNAT range
// some VPCs use, IPv6 unique local addresses).
var defaultNetworks = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("fc00::/7"),
}

// metadataAddrs are cloud services on addresses that the rules below would
// otherwise admit: AWS's IPv6 instance metadata, DNS and time services
// (inside fc00::/7) and Alibaba Cloud's metadata service (inside
// 100.64.0.0/10). 169.254.169.254, which most clouds use, is link-local.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("fd00:ec2::254"),
	netip.MustParseAddr("fd00:ec2::253"),
	netip.MustParseAddr("fd00:ec2::123"),
	netip.MustParseAddr("100.100.100.200"),
}

var (
	thisNet4  = netip.MustParsePrefix("0.0.0.0/8") // "this network": the local host
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	ipv4Compt = netip.MustParsePrefix("::/96")
	broadcast = netip.MustParseAddr("255.255.255.255")
)

// Reasons a discovered node is refused: the reason label of
// cachetun_discovery_rejected_nodes_total and the log.
const (
	rejectLinkLocal   = "link_local"
	rejectMulticast   = "multicast"
	rejectUnspecified = "unspecified"
	rejectBroadcast   = "broadcast"
	rejectMetadata    = "metadata"
	rejectLoopback    = "loopback"
	rejectSelf        = "gateway_address"
	rejectNetwork     = "outside_networks"
	rejectBadAddr     = "bad_address"
	rejectResolve     = "resolve"
	rejectNoID        = "no_id"
	rejectIDMismatch  = "id_mismatch"
	rejectUnreachable = "unreachable"
)

// ErrNodeRefused means a discovered node failed the checks of its target;
// a *NodeRefusedError carries the reason.
var ErrNodeRefused = errors.New("discovered node refused")

// NodeRefusedError says why a discovered node is not published.
type NodeRefusedError struct {
	Reason string // one of the reject constants
	Detail string // cachetun's own sentence; no byte the node sent
}

func (e *NodeRefusedError) Error() string { return e.Detail }

func (e *NodeRefusedError) Is(target error) bool { return target == ErrNodeRefused }

func refused(reason, format string, args ...any) error {
	return &NodeRefusedError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// netPolicy is the set of addresses where a target's discovered nodes may
// live.
type netPolicy struct {
	allowed []netip.Prefix
	// explicit: the operator wrote the networks; only then can loopback
	// or the gateway's own addresses be admitted.
	explicit bool
}

// parseNetworks parses a target's networks option; none gives the
// default policy.
func parseNetworks(cidrs []string) (*netPolicy, error) {
	if len(cidrs) == 0 {
		return &netPolicy{allowed: defaultNetworks}, nil
	}
	p := &netPolicy{explicit: true}
	for _, s := range cidrs {
		pfx, err := parseNetwork(s)
		if err != nil {
			return nil, err
		}
		p.allowed = append(p.allowed, pfx)
	}
	return p, nil
}

// parseNetwork parses one CIDR of a networks option and refuses networks
// that could never admit a node.
func parseNetwork(s string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		if a, ipErr := netip.ParseAddr(strings.TrimSpace(s)); ipErr == nil {
			return netip.Prefix{}, fmt.Errorf("%q is an address, not a network: write %q for that one address", s, netip.PrefixFrom(a, a.BitLen()).String())
		}
		return netip.Prefix{}, fmt.Errorf("%q is not a network in CIDR form such as \"10.0.0.0/16\"", s)
	}
	if pfx.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q is an IPv4-mapped IPv6 network: write the IPv4 network", s)
	}
	if m := pfx.Masked(); m != pfx {
		return netip.Prefix{}, fmt.Errorf("%q has bits set past its prefix length: did you mean %q?", s, m.String())
	}
	// A network inside a range that is never admitted is a mistake worth
	// saying at load time rather than at the first discovery.
	if pfx.Bits() > 0 {
		if reason := forbidden(pfx.Addr()); reason != "" && forbidden(lastAddr(pfx)) == reason {
			return netip.Prefix{}, fmt.Errorf("%q lies in the %s range, where discovered nodes are never admitted", s, strings.ReplaceAll(reason, "_", "-"))
		}
	}
	return pfx, nil
}

// lastAddr returns the highest address of pfx.
func lastAddr(pfx netip.Prefix) netip.Addr {
	b := pfx.Addr().AsSlice()
	for i := pfx.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// embeddedIPv4 returns the IPv4 address inside the IPv6 forms that reach
// one (IPv4-mapped, IPv4-compatible, NAT64 well-known prefix).
func embeddedIPv4(ip netip.Addr) (netip.Addr, bool) {
	if !ip.Is6() {
		return netip.Addr{}, false
	}
	if ip.Is4In6() {
		return ip.Unmap(), true
	}
	if (nat64.Contains(ip) || ipv4Compt.Contains(ip)) && ip != netip.IPv6Unspecified() && ip != netip.IPv6Loopback() {
		b := ip.As16()
		return netip.AddrFrom4([4]byte(b[12:])), true
	}
	return netip.Addr{}, false
}

// forbidden returns the reason ip is never admitted, whatever the
// networks say, or "".
func forbidden(ip netip.Addr) string {
	if v4, ok := embeddedIPv4(ip); ok {
		if r := forbidden(v4); r != "" {
			return r
		}
	}
	switch {
	case !ip.IsValid():
		return rejectBadAddr
	case ip.IsUnspecified(), ip.Is4() && thisNet4.Contains(ip):
		return rejectUnspecified
	case ip.IsLinkLocalUnicast():
		return rejectLinkLocal
	case ip.IsMulticast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast():
		return rejectMulticast
	case ip == broadcast:
		return rejectBroadcast
	}
	for _, m := range metadataAddrs {
		if ip == m {
			return rejectMetadata
		}
	}
	return ""
}

// isLoopbackIP reports loopback addresses in every form.
func isLoopbackIP(ip netip.Addr) bool {
	if v4, ok := embeddedIPv4(ip); ok && v4.IsLoopback() {
		return true
	}
	return ip.IsLoopback()
}

// check returns nil when a discovered node at ip may be dialled, or a
// *NodeRefusedError. self lists the gateway's own addresses.
//
// The rules, in order:
//   - link-local (169.254.0.0/16, fe80::/10, so every cloud's metadata
//     service), multicast, broadcast, unspecified and the cloud service
//     addresses of metadataAddrs are never admitted;
//   - loopback and the gateway's own addresses are admitted only by a
//     network the operator wrote that is itself loopback (127.0.0.1/32)
//     or is exactly that address (10.0.1.5/32): a broad network such as
//     10.0.0.0/8 does not admit the gateway itself;
//   - anything else must lie in one of the networks.
func (p *netPolicy) check(ip netip.Addr, self []netip.Addr) error {
	orig := ip
	if v4, ok := embeddedIPv4(ip); ok && ip.Is4In6() {
		ip = v4 // ::ffff:10.0.0.1 is 10.0.0.1
	}
	if r := forbidden(orig); r != "" {
		what := strings.ReplaceAll(r, "_", "-")
		article := "a"
		if strings.ContainsRune("aeiou", rune(what[0])) {
			article = "an" // an unspecified address
		}
		return refused(r, "%s is %s %s address, never admitted as a cache node", orig, article, what)
	}
	ip = ip.WithZone("")
	selfAddr := ""
	switch {
	case isLoopbackIP(orig):
		selfAddr = rejectLoopback
	default:
		for _, a := range self {
			if a.Unmap().WithZone("") == ip {
				selfAddr = rejectSelf
				break
			}
		}
	}
	if selfAddr != "" {
		for _, n := range p.allowed {
			if !p.explicit || !n.Contains(ip) {
				continue
			}
			if (n.Bits() == ip.BitLen()) || (isLoopbackIP(n.Addr()) && isLoopbackIP(lastAddr(n))) {
				return nil
			}
		}
		what := "a loopback address"
		if selfAddr == rejectSelf {
			what = "an address of the gateway itself"
		}
		return refused(selfAddr, "%s is %s: admitted only when the target's networks list it explicitly (e.g. %q)", orig, what, netip.PrefixFrom(ip, ip.BitLen()).String())
	}
	for _, n := range p.allowed {
		if n.Contains(ip) {
			return nil
		}
	}
	return refused(rejectNetwork, "%s is outside the target's networks %s", orig, p)
}

func (p *netPolicy) String() string {
	s := make([]string, len(p.allowed))
	for i, n := range p.allowed {
		s[i] = n.String()
	}
	return "[" + strings.Join(s, " ") + "]"
}

// interfaceAddrs returns the addresses of the gateway's own interfaces.
func interfaceAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		var ip net.IP
		switch a := a.(type) {
		case *net.IPNet:
			ip = a.IP
		case *net.IPAddr:
			ip = a.IP
		}
		if na, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, na.Unmap())
		}
	}
	return out
}
