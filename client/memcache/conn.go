package memcache

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
)

// Conn rewrites the ElastiCache auto-discovery replies of one memcached
// text-protocol connection to a configuration endpoint:
//
//	config get cluster             -> CONFIG cluster 0 <len>\r\n<body>\r\nEND\r\n
//	get AmazonElastiCache:cluster  -> VALUE AmazonElastiCache:cluster 0 <len>\r\n<body>\r\nEND\r\n
//
// where body is "<version>\n<host>|<ip>|<port> ...\n". Each node becomes
// "<local ip>|<local ip>|<local port>" (see [NodeMap]). Requests are parsed (never changed)
// to pair every reply with its command, so only the reply to one of those
// two commands is ever rewritten, never a stored value. A request it
// cannot pair with certainty (binary protocol, noreply on an unknown
// command, quiet meta commands, an unknown command) ends the rewriting
// for the rest of the connection: from there on bytes are copied.
//
// CopyRequests and CopyReplies run at once, one goroutine each, as
// tunnel.Relay calls them.
type Conn struct {
	mapNode NodeMap

	mu    sync.Mutex // guards the following
	queue []mcKind
}

// mcKind says what the reply to one request looks like.
type mcKind uint8

const (
	mcLine   mcKind = iota // one line
	mcValues               // VALUE blocks, then END
	mcLegacy               // get AmazonElastiCache:cluster
	mcConfig               // config get cluster
	mcStats                // STAT lines, then END
	mcMeta                 // one line; VA <size> has a data block
	mcUnpair               // from here on, copy bytes
)

// Limits of the memcached parser.
const (
	mcMaxLine   = 8 << 10
	mcMaxConfig = 1 << 20
)

// NodeMap maps one "host|ip|port" entry of an auto-discovery reply (host
// or ip may be empty) to the local "ip:port" of that node; ok=false
// leaves the entry as it is. It may wait briefly for a node it does not
// know yet: the reply waits with it.
type NodeMap func(host, ip, port string) (local string, ok bool)

// NewConn returns the rewriter of one connection.
func NewConn(mapNode NodeMap) *Conn {
	return &Conn{mapNode: mapNode}
}

func (m *Conn) push(k mcKind) {
	m.mu.Lock()
	m.queue = append(m.queue, k)
	m.mu.Unlock()
}

func (m *Conn) pop() (mcKind, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.queue) == 0 {
		return 0, false
	}
	k := m.queue[0]
	m.queue = m.queue[1:]
	return k, true
}

// countWriter counts what reaches w.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// mcPipe reads lines and blocks from src and writes to dst, flushing dst
// whenever it would wait for src.
type mcPipe struct {
	br *bufio.Reader
	bw *bufio.Writer
	cw *countWriter
}

func newMCPipe(dst io.Writer, src io.Reader) *mcPipe {
	cw := &countWriter{w: dst}
	return &mcPipe{br: bufio.NewReaderSize(src, 16<<10), bw: bufio.NewWriterSize(cw, 16<<10), cw: cw}
}

var errLongLine = errors.New("memcached line too long")

// line returns the next line with its line end; the slice is valid until
// the next read. On errLongLine it returns what it read; on other errors
// it has written what it read.
func (p *mcPipe) line() ([]byte, error) {
	if buf, _ := p.br.Peek(p.br.Buffered()); bytes.IndexByte(buf, '\n') < 0 {
		if err := p.bw.Flush(); err != nil {
			return nil, err
		}
	}
	l, err := p.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(l) > mcMaxLine {
		return l, errLongLine
	}
	if err != nil && len(l) > 0 { // the stream ends inside a line: pass it on
		_, _ = p.bw.Write(l)
		return nil, err
	}
	return l, err
}

// copyN passes n bytes through.
func (p *mcPipe) copyN(n int64) error {
	for n > 0 {
		if p.br.Buffered() == 0 {
			if err := p.bw.Flush(); err != nil {
				return err
			}
		}
		buf, err := p.br.Peek(int(min(n, int64(max(p.br.Buffered(), 1)))))
		if len(buf) > 0 {
			if _, werr := p.bw.Write(buf); werr != nil {
				return werr
			}
			_, _ = p.br.Discard(len(buf))
			n -= int64(len(buf))
		}
		if err != nil && len(buf) == 0 {
			if errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// raw writes what is pending and copies the rest of src unchanged.
func (p *mcPipe) raw(pending []byte) (int64, error) {
	if _, err := p.bw.Write(pending); err != nil {
		return p.cw.n, err
	}
	if err := p.bw.Flush(); err != nil {
		return p.cw.n, err
	}
	if n := p.br.Buffered(); n > 0 {
		buf, _ := p.br.Peek(n)
		if _, err := p.cw.Write(buf); err != nil {
			return p.cw.n, err
		}
		_, _ = p.br.Discard(n)
	}
	_, err := io.Copy(p.cw, p.br)
	return p.cw.n, err
}

// end flushes and maps io.EOF to a clean end.
func (p *mcPipe) end(err error) (int64, error) {
	if ferr := p.bw.Flush(); ferr != nil && (err == nil || errors.Is(err, io.EOF)) {
		return p.cw.n, ferr
	}
	if errors.Is(err, io.EOF) {
		return p.cw.n, nil
	}
	return p.cw.n, err
}

// CopyRequests copies the application's requests unchanged, noting the
// kind of reply each one gets.
func (m *Conn) CopyRequests(dst io.Writer, src io.Reader) (int64, error) {
	p := newMCPipe(dst, src)
	if b, err := p.br.Peek(1); err == nil && b[0] == 0x80 { // binary protocol
		m.push(mcUnpair)
		return p.raw(nil)
	}
	for {
		l, err := p.line()
		if errors.Is(err, errLongLine) {
			m.push(mcUnpair)
			return p.raw(l)
		}
		if err != nil {
			return p.end(err)
		}
		kind, data, ok := classifyRequest(l)
		if !ok {
			m.push(mcUnpair)
			return p.raw(l)
		}
		if kind >= 0 {
			m.push(mcKind(kind))
		}
		if _, err := p.bw.Write(l); err != nil {
			return p.end(err)
		}
		if data >= 0 {
			if err := p.copyN(data + 2); err != nil {
				return p.end(err)
			}
		}
	}
}

// classifyRequest returns the reply kind of a request line (-1: no
// reply) and the length of the data block that follows it (-1: none).
// ok=false means the request cannot be paired with certainty.
func classifyRequest(line []byte) (kind int, data int64, ok bool) {
	f := bytes.Fields(line)
	if len(f) == 0 {
		return int(mcLine), -1, true // memcached answers ERROR
	}
	noreply := string(f[len(f)-1]) == "noreply"
	args := f[1:]
	switch cmd := string(f[0]); cmd {
	case "get", "gets", "gat", "gats":
		if cmd == "get" && len(args) == 1 && string(args[0]) == "AmazonElastiCache:cluster" {
			return int(mcLegacy), -1, true
		}
		return int(mcValues), -1, len(args) > 0
	case "set", "add", "replace", "append", "prepend", "cas":
		return classifyStorage(cmd, args, noreply)
	case "delete", "incr", "decr", "touch", "verbosity", "flush_all":
		return lineReply(noreply), -1, true
	case "version", "mn", "me":
		return int(mcLine), -1, true
	case "quit":
		return -1, -1, true
	case "config":
		if len(args) == 2 && string(args[0]) == "get" && string(args[1]) == "cluster" {
			return int(mcConfig), -1, true
		}
		return 0, 0, false
	case "stats":
		return classifyStats(args)
	case "mg", "ma", "md", "ms":
		return classifyMeta(cmd, args)
	}
	return 0, 0, false
}

// lineReply is the kind of a one-line reply, -1 with noreply.
func lineReply(noreply bool) int {
	if noreply {
		return -1
	}
	return int(mcLine)
}

// dataLen parses the length of a data block.
func dataLen(b []byte) (int64, bool) {
	n, err := strconv.ParseInt(string(b), 10, 64)
	return n, err == nil && n >= 0 && n < 1<<31
}

// classifyStorage classifies set, add, replace, append, prepend and cas:
// "<cmd> <key> <flags> <exptime> <bytes> [<cas>] [noreply]".
func classifyStorage(cmd string, args [][]byte, noreply bool) (kind int, data int64, ok bool) {
	want := 4
	if cmd == "cas" {
		want = 5
	}
	if len(args) != want && !(len(args) == want+1 && noreply) {
		return 0, 0, false
	}
	n, ok := dataLen(args[3])
	if !ok {
		return 0, 0, false
	}
	return lineReply(noreply), n, true
}

// classifyStats classifies "stats [<group>]".
func classifyStats(args [][]byte) (kind int, data int64, ok bool) {
	if len(args) == 0 {
		return int(mcStats), -1, true
	}
	switch string(args[0]) {
	case "items", "slabs", "sizes", "conns", "settings", "extstore":
		return int(mcStats), -1, len(args) == 1
	case "reset":
		return int(mcLine), -1, len(args) == 1
	}
	return 0, 0, false
}

// classifyMeta classifies the meta commands mg, ma, md and ms.
func classifyMeta(cmd string, args [][]byte) (kind int, data int64, ok bool) {
	for _, a := range args[min(1, len(args)):] {
		if len(a) > 0 && a[0] == 'q' {
			return 0, 0, false // quiet mode suppresses some replies
		}
	}
	switch cmd {
	case "ms":
		if len(args) < 2 {
			return 0, 0, false
		}
		n, ok := dataLen(args[1])
		return int(mcLine), n, ok
	case "md":
		return int(mcLine), -1, len(args) > 0
	}
	return int(mcMeta), -1, len(args) > 0
}

// CopyReplies copies the server's replies, rewriting the node list of
// auto-discovery replies.
func (m *Conn) CopyReplies(dst io.Writer, src io.Reader) (int64, error) {
	p := newMCPipe(dst, src)
	for {
		l, err := p.line()
		if errors.Is(err, errLongLine) {
			return p.raw(l)
		}
		if err != nil {
			return p.end(err)
		}
		kind, ok := m.pop()
		if !ok || kind == mcUnpair {
			return p.raw(l) // a reply nobody asked for, or pairing ended
		}
		clientErr := bytes.HasPrefix(l, []byte("CLIENT_ERROR"))
		if err := m.reply(p, kind, l); err != nil {
			if errors.Is(err, errLongLine) || errors.Is(err, errUnpaired) {
				return p.raw(nil)
			}
			return p.end(err)
		}
		if clientErr {
			// The server may skip input after a client error: pairing
			// is no longer certain.
			return p.raw(nil)
		}
	}
}

var errUnpaired = errors.New("reply does not match its request")

// reply passes on one reply of kind whose first line is l. Whatever it
// consumed is written, also when it returns errUnpaired.
func (m *Conn) reply(p *mcPipe, kind mcKind, l []byte) error {
	switch kind {
	case mcLine:
		_, err := p.bw.Write(l)
		return err
	case mcMeta:
		return replyMeta(p, l)
	case mcStats:
		return replyStats(p, l)
	case mcConfig:
		if bytes.HasPrefix(l, []byte("CONFIG cluster ")) {
			return m.configReply(p, l)
		}
		_, err := p.bw.Write(l)
		if err == nil && !isErrorLine(l) {
			err = errUnpaired
		}
		return err
	case mcValues, mcLegacy:
		return m.replyValues(p, kind, l)
	}
	return errUnpaired
}

// isErrorLine reports whether l is one of memcached's error replies.
func isErrorLine(l []byte) bool {
	return bytes.HasPrefix(l, []byte("ERROR")) || bytes.HasPrefix(l, []byte("CLIENT_ERROR")) || bytes.HasPrefix(l, []byte("SERVER_ERROR"))
}

// replyMeta passes on a meta reply: one line, and the data block of
// "VA <size>".
func replyMeta(p *mcPipe, l []byte) error {
	if _, err := p.bw.Write(l); err != nil {
		return err
	}
	if f := bytes.Fields(l); len(f) >= 2 && string(f[0]) == "VA" {
		n, err := strconv.ParseInt(string(f[1]), 10, 64)
		if err != nil || n < 0 {
			return errUnpaired
		}
		return p.copyN(n + 2)
	}
	return nil
}

// replyStats passes on STAT lines up to END (or an error line).
func replyStats(p *mcPipe, l []byte) error {
	for {
		if _, err := p.bw.Write(l); err != nil {
			return err
		}
		if !bytes.HasPrefix(l, []byte("STAT ")) {
			return nil // END, or an error
		}
		var err error
		if l, err = p.line(); err != nil {
			return err
		}
	}
}

// replyValues passes on VALUE blocks up to END (or an error line),
// rewriting the auto-discovery value of a legacy request.
func (m *Conn) replyValues(p *mcPipe, kind mcKind, l []byte) error {
	for {
		f := bytes.Fields(l)
		if len(f) < 4 || string(f[0]) != "VALUE" {
			_, err := p.bw.Write(l) // END, or an error
			return err
		}
		if kind == mcLegacy && string(f[1]) == "AmazonElastiCache:cluster" {
			if err := m.configReply(p, l); err != nil {
				return err
			}
		} else {
			n, err := strconv.ParseInt(string(f[3]), 10, 64)
			if _, werr := p.bw.Write(l); werr != nil {
				return werr
			}
			if err != nil || n < 0 {
				return errUnpaired
			}
			if err := p.copyN(n + 2); err != nil {
				return err
			}
		}
		var err error
		if l, err = p.line(); err != nil {
			return err
		}
	}
}

// configReply rewrites one auto-discovery block: the header line l
// ("CONFIG cluster <flags> <len>" or "VALUE <key> <flags> <len>"), the
// body and its CRLF. The caller handles what follows (END).
func (m *Conn) configReply(p *mcPipe, l []byte) error {
	const lenField = 3
	f := bytes.Fields(l)
	var n int64 = -1
	if len(f) > lenField {
		n, _ = strconv.ParseInt(string(f[lenField]), 10, 64)
	}
	if n < 0 {
		if _, err := p.bw.Write(l); err != nil {
			return err
		}
		return errUnpaired
	}
	if n > mcMaxConfig { // too large to hold: pass it on as it is
		if _, err := p.bw.Write(l); err != nil {
			return err
		}
		return p.copyN(n + 2)
	}
	header := bytes.Clone(l)
	body := make([]byte, n+2)
	if got, err := io.ReadFull(p.br, body); err != nil { // cut short: pass on what came
		_, _ = p.bw.Write(header)
		_, _ = p.bw.Write(body[:got])
		return err
	}
	nb, ok := rewriteClusterConfig(body[:n], m.mapNode)
	if !ok {
		nb = body[:n]
	}
	f = bytes.Fields(header)
	f[lenField] = strconv.AppendInt(nil, int64(len(nb)), 10)
	out := append(bytes.Join(f, []byte(" ")), '\r', '\n')
	out = append(out, nb...)
	out = append(out, body[n:]...)
	_, err := p.bw.Write(out)
	return err
}

// rewriteClusterConfig replaces every "host|ip|port" of the node line of
// body (the line after the version) by the local address of that node.
// Entries it cannot map are left as they are; ok=false means body is not
// an auto-discovery body and is left alone.
func rewriteClusterConfig(body []byte, mapNode NodeMap) ([]byte, bool) {
	i := bytes.IndexByte(body, '\n')
	if i < 0 {
		return nil, false
	}
	if _, err := strconv.ParseInt(string(bytes.TrimSpace(body[:i])), 10, 64); err != nil {
		return nil, false
	}
	rest := body[i+1:]
	j := bytes.IndexAny(rest, "\r\n")
	if j < 0 {
		j = len(rest)
	}
	list := rest[:j]
	out := make([]byte, 0, len(body)+32)
	out = append(out, body[:i+1]...)
	changed := false
	k := 0
	for k < len(list) {
		if list[k] == ' ' || list[k] == '\t' {
			out = append(out, list[k])
			k++
			continue
		}
		e := k
		for e < len(list) && list[e] != ' ' && list[e] != '\t' {
			e++
		}
		entry := list[k:e]
		k = e
		parts := bytes.Split(entry, []byte("|"))
		if len(parts) != 3 {
			return nil, false
		}
		local, ok := mapNode(string(parts[0]), string(parts[1]), string(parts[2]))
		lh, lp, err := net.SplitHostPort(local)
		if !ok || err != nil {
			out = append(out, entry...)
			continue
		}
		out = append(out, lh...)
		out = append(out, '|')
		out = append(out, lh...)
		out = append(out, '|')
		out = append(out, lp...)
		changed = true
	}
	out = append(out, rest[j:]...)
	return out, changed
}
