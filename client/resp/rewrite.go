package resp

import (
	"bytes"
	"strconv"
)

// appendRewrite appends to dst the reply frame of kind k (decoded as v) with node
// addresses rewritten. ok=false means nothing changed and dst is unchanged.
func (c *Conn) appendRewrite(dst []byte, k kind, frame []byte, v *value) ([]byte, bool) {
	var e editor
	switch k {
	case kSlots:
		c.editSlots(&e, v)
	case kShards:
		c.editShards(&e, v)
	case kNodes:
		c.editNodesText(&e, v)
	case kReplicas:
		if v.isArray() {
			for i := range v.elems {
				c.editNodesText(&e, &v.elems[i])
			}
		}
	}
	if len(e.edits) == 0 {
		return dst, false
	}
	return e.apply(dst, frame), true
}

// appendRedirect appends to dst the error reply msg (without '-' and CRLF) with
// the address of a MOVED, ASK or REDIRECT error rewritten. ok=false means msg is
// not such an error or its address is not known, and dst is unchanged.
func (c *Conn) appendRedirect(dst, msg []byte) ([]byte, bool) {
	var kind string
	var rest []byte
	switch {
	case bytes.HasPrefix(msg, []byte("MOVED ")):
		kind, rest = KindMoved, msg[len("MOVED "):]
	case bytes.HasPrefix(msg, []byte("ASK ")):
		kind, rest = KindAsk, msg[len("ASK "):]
	case bytes.HasPrefix(msg, []byte("REDIRECT ")):
		kind, rest = KindRedirect, msg[len("REDIRECT "):]
	default:
		return dst, false
	}
	slot := -1
	var slotText []byte
	if kind != KindRedirect {
		sp := bytes.IndexByte(rest, ' ')
		if sp <= 0 || !isDigits(rest[:sp]) || sp > 5 {
			return dst, false
		}
		slotText = rest[:sp]
		slot, _ = strconv.Atoi(string(slotText))
		rest = rest[sp+1:]
	}
	if len(rest) == 0 || bytes.IndexByte(rest, ' ') >= 0 || bytes.IndexByte(rest, ':') < 0 {
		return dst, false
	}
	upstream := string(rest)
	c.redirect(kind, slot, upstream)
	local, ok := c.lookup(upstream)
	if !ok {
		return dst, false
	}
	dst = append(dst, '-')
	dst = append(dst, kind...)
	dst = append(dst, ' ')
	if slotText != nil {
		dst = append(dst, slotText...)
		dst = append(dst, ' ')
	}
	dst = append(dst, local...)
	return append(dst, '\r', '\n'), true
}

// lookup calls Map, refusing answers that would break the protocol.
func (c *Conn) lookup(upstream string) (string, bool) {
	local, ok := c.opts.Map(upstream)
	if !ok || local == "" || containsAny(local, " \r\n") {
		return "", false
	}
	return local, true
}

// resolve finds the local host and port of a node that the cluster reports
// under any of hosts (IP, endpoint, hostname; empty or "?" when unknown) at port.
// It tries the known hosts in order, and the empty host ("the node you asked")
// only if no host is known. On failure it returns the address to report.
func (c *Conn) resolve(hosts [][]byte, port []byte) (lhost, lport []byte, upstream string, ok bool) {
	if !isDigits(port) || string(port) == "0" {
		return nil, nil, "", false
	}
	tried := 0
	for i, h := range hosts {
		if len(h) == 0 || string(h) == "?" || seen(hosts[:i], h) {
			continue
		}
		tried++
		up := string(h) + ":" + string(port)
		if upstream == "" {
			upstream = up
		}
		if lh, lp, ok := c.lookupSplit(up); ok {
			return lh, lp, "", true
		}
	}
	if tried == 0 {
		upstream = ":" + string(port)
		if lh, lp, ok := c.lookupSplit(upstream); ok {
			return lh, lp, "", true
		}
	}
	return nil, nil, upstream, false
}

// seen reports whether h is one of hosts.
func seen(hosts [][]byte, h []byte) bool {
	for _, o := range hosts {
		if bytes.Equal(o, h) {
			return true
		}
	}
	return false
}

// lookupSplit looks upstream up and splits the answer into host and port.
func (c *Conn) lookupSplit(upstream string) (host, port []byte, ok bool) {
	local, ok := c.lookup(upstream)
	if !ok {
		return nil, nil, false
	}
	i := bytes.LastIndexByte([]byte(local), ':')
	if i < 0 {
		return nil, nil, false
	}
	h, p := []byte(local[:i]), []byte(local[i+1:])
	if len(h) >= 2 && h[0] == '[' && h[len(h)-1] == ']' {
		h = h[1 : len(h)-1]
	}
	if !isDigits(p) {
		return nil, nil, false
	}
	return h, p, true
}

// editSlots rewrites a CLUSTER SLOTS reply: an array of
// [start, end, node, node...], each node [endpoint, port, id, {ip, hostname}]
// (the metadata map since Redis 7, an array of pairs in RESP2).
func (c *Conn) editSlots(e *editor, v *value) {
	if !v.isArray() {
		return
	}
	for i := range v.elems {
		rng := &v.elems[i]
		if !rng.isArray() || len(rng.elems) < 3 {
			continue
		}
		slot := -1
		if d := rng.elems[0].integer(); d != nil {
			slot, _ = strconv.Atoi(string(d))
		}
		for j := 2; j < len(rng.elems); j++ {
			c.editSlotsNode(e, &rng.elems[j], slot)
		}
	}
}

func (c *Conn) editSlotsNode(e *editor, nd *value, slot int) {
	if !nd.isArray() || len(nd.elems) < 2 {
		return
	}
	ep, port := &nd.elems[0], &nd.elems[1]
	epText, isText := ep.text()
	if port.integer() == nil || !isText && !ep.null {
		return
	}
	var ip, hostname *value
	if len(nd.elems) >= 4 {
		meta := &nd.elems[3]
		ip, hostname = textField(meta, "ip"), textField(meta, "hostname")
	}
	hosts := [][]byte{epText, fieldText(ip), fieldText(hostname)}
	lh, lp, up, ok := c.resolve(hosts, port.integer())
	if !ok {
		if up != "" {
			c.redirect(KindUnknown, slot, up)
		}
		return
	}
	e.setText(ep, lh)
	e.setInt(port, lp)
	if ip != nil {
		e.setText(ip, lh)
	}
	if hostname != nil {
		e.setText(hostname, lh)
	}
}

// textField is the string value of key in map m, or nil.
func textField(m *value, key string) *value {
	f := m.get(key)
	if f == nil {
		return nil
	}
	if _, ok := f.text(); !ok {
		return nil
	}
	return f
}

func fieldText(f *value) []byte {
	if f == nil {
		return nil
	}
	t, _ := f.text()
	return t
}

// editShards rewrites a CLUSTER SHARDS reply: an array of maps
// {slots: [...], nodes: [{id, port, tls-port, ip, endpoint, hostname, ...}...]}
// (RESP3 maps, or arrays of pairs in RESP2).
func (c *Conn) editShards(e *editor, v *value) {
	if !v.isArray() {
		return
	}
	for i := range v.elems {
		shard := &v.elems[i]
		nodes := shard.get("nodes")
		if nodes == nil || !nodes.isArray() {
			continue
		}
		slot := -1
		if s := shard.get("slots"); s != nil && s.isArray() && len(s.elems) > 0 {
			if d := s.elems[0].integer(); d != nil {
				slot, _ = strconv.Atoi(string(d))
			}
		}
		for j := range nodes.elems {
			c.editShardsNode(e, &nodes.elems[j], slot)
		}
	}
}

func (c *Conn) editShardsNode(e *editor, nd *value, slot int) {
	if !nd.pairs() {
		return
	}
	ip, endpoint, hostname := textField(nd, "ip"), textField(nd, "endpoint"), textField(nd, "hostname")
	port, tlsPort := nd.get("port"), nd.get("tls-port")
	hosts := [][]byte{fieldText(ip), fieldText(endpoint), fieldText(hostname)}

	var lh, lp, ltp []byte
	var up string
	okPort, okTLS := false, false
	if port != nil && port.integer() != nil {
		lh, lp, up, okPort = c.resolve(hosts, port.integer())
	}
	if tlsPort != nil && tlsPort.integer() != nil {
		var h []byte
		var u string
		h, ltp, u, okTLS = c.resolve(hosts, tlsPort.integer())
		if !okPort {
			lh = h
		}
		if up == "" {
			up = u
		}
	}
	if !okPort && !okTLS {
		if up != "" {
			c.redirect(KindUnknown, slot, up)
		}
		return
	}
	for _, f := range []*value{ip, endpoint, hostname} {
		if f != nil {
			e.setText(f, lh)
		}
	}
	if okPort {
		e.setInt(port, lp)
	}
	if okTLS {
		e.setInt(tlsPort, ltp)
	}
}

// editNodesText rewrites the text of a CLUSTER NODES reply (or of one CLUSTER
// REPLICAS element) held in the string v.
func (c *Conn) editNodesText(e *editor, v *value) {
	text, ok := v.text()
	if !ok {
		return
	}
	out, changed := c.appendNodesText(nil, text)
	if changed {
		e.setText(v, out)
	}
}

// appendNodesText appends text, lines of "<id> <ip:port@cport[,hostname[,aux=v]...]> <flags> ...",
// to dst with the addresses rewritten.
func (c *Conn) appendNodesText(dst, text []byte) ([]byte, bool) {
	changed := false
	for len(text) > 0 {
		line := text
		rest := []byte(nil)
		if i := bytes.IndexByte(text, '\n'); i >= 0 {
			line, rest = text[:i+1], text[i+1:]
		}
		var ok bool
		dst, ok = c.appendNodeLine(dst, line)
		changed = changed || ok
		text = rest
	}
	return dst, changed
}

// appendNodeLine appends one CLUSTER NODES line with its address field rewritten.
func (c *Conn) appendNodeLine(dst, line []byte) ([]byte, bool) {
	s1 := bytes.IndexByte(line, ' ')
	if s1 < 0 {
		return append(dst, line...), false
	}
	field := line[s1+1:]
	after := []byte(nil)
	if s2 := bytes.IndexAny(field, " \r\n"); s2 >= 0 {
		field, after = field[:s2], field[s2:]
	}
	// field: host:port[@cport][,hostname[,key=value]...]
	addr, extra := field, []byte(nil)
	if i := bytes.IndexByte(field, ','); i >= 0 {
		addr, extra = field[:i], field[i:]
	}
	hostport, bus := addr, []byte(nil)
	if i := bytes.IndexByte(addr, '@'); i >= 0 {
		hostport, bus = addr[:i], addr[i:]
	}
	colon := bytes.LastIndexByte(hostport, ':')
	if colon < 0 {
		return append(dst, line...), false
	}
	host, port := hostport[:colon], hostport[colon+1:]
	var hostname []byte
	var aux [][]byte
	if len(extra) > 0 {
		parts := bytes.Split(extra[1:], []byte(","))
		hostname, aux = parts[0], parts[1:]
		if bytes.IndexByte(hostname, '=') >= 0 {
			hostname, aux = nil, parts // no hostname, aux fields only
		}
	}
	lh, lp, up, ok := c.resolve([][]byte{host, hostname}, port)
	if !ok {
		if up != "" {
			c.redirect(KindUnknown, -1, up)
		}
		return append(dst, line...), false
	}
	dst = append(dst, line[:s1+1]...)
	dst = append(dst, lh...)
	dst = append(dst, ':')
	dst = append(dst, lp...)
	dst = append(dst, bus...)
	if len(extra) > 0 {
		if hostname != nil {
			dst = append(dst, ',')
			if len(hostname) > 0 {
				dst = append(dst, lh...)
			}
		}
		for _, a := range aux {
			dst = append(dst, ',')
			if tp, ok := bytes.CutPrefix(a, []byte("tls-port=")); ok {
				if _, ltp, _, ok := c.resolve([][]byte{host, hostname}, tp); ok {
					dst = append(dst, "tls-port="...)
					dst = append(dst, ltp...)
					continue
				}
			}
			dst = append(dst, a...)
		}
	}
	return append(dst, after...), true
}

func isDigits(b []byte) bool {
	if len(b) == 0 || len(b) > 18 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func containsAny(s, chars string) bool {
	for i := 0; i < len(s); i++ {
		for j := 0; j < len(chars); j++ {
			if s[i] == chars[j] {
				return true
			}
		}
	}
	return false
}
