package auth

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// wildcardMatch reports whether s matches the OpenSSH pattern pat, where '*'
// matches any sequence (separators included) and '?' any single byte. It runs
// in O(len(pat)*len(s)) time, whatever the pattern.
func wildcardMatch(pat, s string) bool {
	p, i := 0, 0
	starP, starI := -1, 0
	for i < len(s) {
		switch {
		case p < len(pat) && pat[p] == '*':
			starP, starI = p, i
			p++
		case p < len(pat) && (pat[p] == '?' || pat[p] == s[i]):
			p++
			i++
		case starP >= 0:
			starI++
			p, i = starP+1, starI
		default:
			return false
		}
	}
	for p < len(pat) && pat[p] == '*' {
		p++
	}
	return p == len(pat)
}

// sourcePattern is one entry of a from= list.
type sourcePattern struct {
	negate bool
	prefix netip.Prefix // valid for CIDR entries
	addr   netip.Addr   // valid for plain addresses
	glob   string       // otherwise: wildcard pattern applied to the IP string
}

func (p sourcePattern) match(ip netip.Addr) bool {
	switch {
	case p.prefix.IsValid():
		return p.prefix.Contains(ip)
	case p.addr.IsValid():
		return p.addr == ip
	default:
		return wildcardMatch(p.glob, ip.String())
	}
}

// sourcePatterns is a from= list or a source-address list. A remote address
// is allowed if it matches a positive entry and no negated one.
type sourcePatterns []sourcePattern

func (ps sourcePatterns) allows(ip netip.Addr) bool {
	matched := false
	for _, p := range ps {
		if !p.match(ip) {
			continue
		}
		if p.negate {
			return false
		}
		matched = true
	}
	return matched
}

func (ps sourcePatterns) String() string {
	s := make([]string, len(ps))
	for i, p := range ps {
		n := ""
		if p.negate {
			n = "!"
		}
		switch {
		case p.prefix.IsValid():
			s[i] = n + p.prefix.String()
		case p.addr.IsValid():
			s[i] = n + p.addr.String()
		default:
			s[i] = n + p.glob
		}
	}
	return strings.Join(s, ",")
}

// parseSourcePatterns parses a comma-separated list of CIDRs, IP addresses
// and (if allowGlob) OpenSSH wildcard patterns, each optionally negated with
// '!'. Host names are refused: cachetun never resolves names.
func parseSourcePatterns(list string, allowGlob bool) (sourcePatterns, error) {
	var ps sourcePatterns
	for _, raw := range strings.Split(list, ",") {
		entry := strings.TrimSpace(raw)
		var p sourcePattern
		if strings.HasPrefix(entry, "!") {
			if !allowGlob {
				return nil, fmt.Errorf("negation %q is not allowed here", entry)
			}
			p.negate = true
			entry = entry[1:]
		}
		if entry == "" {
			return nil, errors.New("empty address pattern")
		}
		switch {
		case strings.Contains(entry, "/"):
			pfx, err := netip.ParsePrefix(entry)
			if err != nil {
				return nil, fmt.Errorf("invalid CIDR %q", entry)
			}
			if pfx.Masked() != pfx {
				return nil, fmt.Errorf("CIDR %q has host bits set: use %s", entry, pfx.Masked())
			}
			if pfx.Addr().Is4In6() {
				return nil, fmt.Errorf("CIDR %q is an IPv4-mapped IPv6 prefix: write it as IPv4", entry)
			}
			p.prefix = pfx
		case strings.ContainsAny(entry, "*?"):
			if !allowGlob {
				return nil, fmt.Errorf("wildcard %q is not allowed here", entry)
			}
			p.glob = entry
		default:
			a, err := netip.ParseAddr(entry)
			if err != nil {
				return nil, fmt.Errorf("%q is not an IP address, CIDR or wildcard pattern (host names are not resolved)", entry)
			}
			p.addr = a.Unmap().WithZone("")
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// remoteAddr converts a net.IP to a netip.Addr (IPv4-mapped addresses become
// IPv4). ok is false for nil or malformed IPs.
func remoteAddr(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
