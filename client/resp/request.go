package resp

import "bytes"

// Request parser states. The parser is fed whatever each read returns and keeps
// its place between reads, so it never holds request bytes back.
const (
	sStart   = iota // before the first byte of a command
	sCount          // digits of "*<argc>"
	sCountLF        // the '\n' after "*<argc>\r"
	sDollar         // the '$' of a bulk argument
	sLen            // digits of "$<len>"
	sLenLF          // the '\n' after "$<len>\r"
	sData           // argument bytes
	sDataEnd        // the two bytes after an argument, skipped as Redis does
	sInline         // an inline command, up to '\n'
)

// argCap is how many bytes of each of the first three arguments are kept,
// lowercased. Longer arguments are marked too long: no command or subcommand this
// package reacts to is longer.
const argCap = 16

// reqParser follows the client's commands and numbers their replies. It parses
// like Redis's processMultibulkBuffer and processInlineBuffer; whatever it does
// not parse cleanly (the server would answer a protocol error and close) switches
// it off after telling the reply side to stop pairing.
type reqParser struct {
	c   *Conn
	off bool

	state int
	num   int64 // header number being parsed
	ndig  int
	neg   bool
	argc  int64
	argi  int64
	left  int64 // bytes of the current argument still to come

	args [3][argCap]byte
	argl [3]int // length kept; argCap+1 means too long
	line []byte // inline command being gathered

	idx int64 // number of the reply the next command gets

	inMulti   bool
	multiN    int64 // commands queued since MULTI
	multiOver bool  // too many CLUSTER commands queued to follow
	multiPlan []execItem
}

// feed parses the next bytes read from the client.
func (p *reqParser) feed(b []byte) {
	i := 0
	for i < len(b) && !p.off {
		switch p.state {
		case sStart:
			if b[i] == '*' {
				if j := p.fastCommand(b, i); j > i {
					i = j
					continue
				}
				p.state, p.num, p.ndig, p.neg = sCount, 0, 0, false
				i++
			} else {
				p.state = sInline
				p.line = p.line[:0]
			}
		case sCount, sLen:
			c := b[i]
			switch {
			case c >= '0' && c <= '9' && p.ndig < 18:
				p.num = p.num*10 + int64(c-'0')
				p.ndig++
			case c == '-' && p.ndig == 0 && !p.neg:
				p.neg = true
			case c == '\r' && p.ndig > 0:
				p.state++
			default:
				p.fail("bad number in request")
				return
			}
			i++
		case sCountLF:
			if b[i] != '\n' {
				p.fail("bad multibulk header")
				return
			}
			i++
			p.state = sStart
			if p.neg || p.num == 0 {
				continue // Redis ignores "*0" and "*-1"
			}
			p.argc, p.argi = p.num, 0
			p.state = sDollar
		case sDollar:
			if b[i] != '$' {
				p.fail("expected '$' in request")
				return
			}
			i++
			p.state, p.num, p.ndig, p.neg = sLen, 0, 0, false
		case sLenLF:
			if b[i] != '\n' || p.neg {
				p.fail("bad bulk header")
				return
			}
			i++
			p.left = p.num
			if p.argi < 3 {
				p.argl[p.argi] = 0
				if p.left > argCap {
					p.argl[p.argi] = argCap + 1
				}
			}
			p.state = sData
			if p.left == 0 {
				p.state, p.left = sDataEnd, 2
			}
		case sData:
			k := int64(len(b) - i)
			if k > p.left {
				k = p.left
			}
			if p.argi < 3 && p.argl[p.argi] <= argCap {
				a := &p.args[p.argi]
				n := p.argl[p.argi]
				for _, c := range b[i : i+int(k)] {
					if 'A' <= c && c <= 'Z' {
						c += 'a' - 'A'
					}
					a[n] = c
					n++
				}
				p.argl[p.argi] = n
			}
			i += int(k)
			p.left -= k
			if p.left == 0 {
				p.state, p.left = sDataEnd, 2
			}
		case sDataEnd:
			k := int64(len(b) - i)
			if k > p.left {
				k = p.left
			}
			i += int(k)
			p.left -= k
			if p.left == 0 {
				p.argi++
				if p.argi == p.argc {
					p.state = sStart
					p.command(p.argc)
				} else {
					p.state = sDollar
				}
			}
		case sInline:
			j := bytes.IndexByte(b[i:], '\n')
			end := len(b)
			if j >= 0 {
				end = i + j
			}
			seg := b[i:end]
			if len(p.line)+len(seg) > maxInline || bytes.IndexByte(seg, 0) >= 0 {
				// Redis finds the end of an inline command with strchr: a NUL
				// hides the newline, and the server eventually drops the client.
				p.fail("inline command too long or with NUL")
				return
			}
			p.line = append(p.line, seg...)
			if j < 0 {
				i = len(b)
				continue
			}
			i = end + 1
			p.state = sStart
			p.inline()
		}
	}
}

// interestingLen has bit n set if a command that command() reacts to has n letters.
const interestingLen = 1<<4 | 1<<5 | 1<<6 | 1<<7 | 1<<9 | 1<<10 | 1<<11 | 1<<12

// interestingFirst has bit c-'a' set if such a command starts with letter c.
const interestingFirst = 1<<('c'-'a') | 1<<('d'-'a') | 1<<('e'-'a') | 1<<('m'-'a') | 1<<('p'-'a') |
	1<<('q'-'a') | 1<<('r'-'a') | 1<<('s'-'a') | 1<<('u'-'a') | 1<<('w'-'a')

// interesting reports whether a command named name may need command()'s attention.
func interesting(name []byte) bool {
	if len(name) >= 16 || interestingLen>>len(name)&1 == 0 {
		return false
	}
	c := name[0] | 0x20 - 'a'
	return c < 26 && interestingFirst>>c&1 != 0
}

// fastCommand parses the multibulk command at b[i] if it is all in b, and
// returns the index after it, or i to leave it to the state machine.
func (p *reqParser) fastCommand(b []byte, i int) int {
	argc, j, ok := parseLenFast(b, i+1)
	if ok != 1 || argc <= 0 || argc > 1<<20 {
		return i
	}
	var arg [3][2]int
	for k := int64(0); k < argc; k++ {
		if j >= len(b) || b[j] != '$' {
			return i
		}
		n, h, ok := parseLenFast(b, j+1)
		if ok != 1 || n < 0 || n > int64(len(b)-h-2) {
			return i
		}
		e := h + int(n)
		if k < 3 {
			arg[k] = [2]int{h, e}
		}
		j = e + 2 // Redis skips the two bytes after an argument unseen
	}
	if !interesting(b[arg[0][0]:arg[0][1]]) {
		p.idx++
		if p.inMulti {
			p.multiN++
		}
		return j
	}
	for k := 0; k < 3 && int64(k) < argc; k++ {
		a := b[arg[k][0]:arg[k][1]]
		if len(a) > argCap {
			p.argl[k] = argCap + 1
			continue
		}
		for x, c := range a {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			p.args[k][x] = c
		}
		p.argl[k] = len(a)
	}
	p.command(argc)
	return j
}

// fail gives up following requests for the rest of the connection.
func (p *reqParser) fail(why string) {
	p.c.log.Debug("cannot follow requests; no longer pairing replies", "reason", why)
	p.stop(kUnpair)
}

// stop tells the reply side that replies from p.idx on cannot be paired (kUnpair)
// or are not RESP (kRaw), and stops parsing.
func (p *reqParser) stop(k kind) {
	p.c.enqueue(entry{idx: p.idx, kind: k})
	p.off = true
	p.line = nil
}

func (p *reqParser) arg(i int) []byte {
	if p.argl[i] > argCap {
		return nil
	}
	return p.args[i][:p.argl[i]]
}

// inline splits an inline command the way Redis's sdssplitargs does, keeping the
// first three arguments, and handles the command if it has any.
func (p *reqParser) inline() {
	line := p.line
	var argc int64
	i := 0
	for {
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		if i == len(line) {
			break
		}
		n, inq, insq, done := 0, false, false, false
		slot := -1
		if argc < 3 {
			slot = int(argc)
		}
		put := func(c byte) {
			if slot < 0 {
				return
			}
			if n < argCap {
				if 'A' <= c && c <= 'Z' {
					c += 'a' - 'A'
				}
				p.args[slot][n] = c
			}
			n++
		}
		for !done {
			var c, c1 byte // line[i], line[i+1]; 0 past the end, as in C
			if i < len(line) {
				c = line[i]
			}
			if i+1 < len(line) {
				c1 = line[i+1]
			}
			switch {
			case inq:
				switch {
				case c == '\\' && c1 == 'x' && i+3 < len(line) && isHex(line[i+2]) && isHex(line[i+3]):
					put(unhex(line[i+2])<<4 | unhex(line[i+3]))
					i += 3
				case c == '\\' && c1 != 0:
					i++
					switch line[i] {
					case 'n':
						put('\n')
					case 'r':
						put('\r')
					case 't':
						put('\t')
					case 'b':
						put('\b')
					case 'a':
						put('\a')
					default:
						put(line[i])
					}
				case c == '"':
					if c1 != 0 && !isSpace(c1) {
						p.fail("unbalanced quotes in inline command")
						return
					}
					done = true
				case i >= len(line):
					p.fail("unbalanced quotes in inline command")
					return
				default:
					put(c)
				}
			case insq:
				switch {
				case c == '\\' && c1 == '\'':
					i++
					put('\'')
				case c == '\'':
					if c1 != 0 && !isSpace(c1) {
						p.fail("unbalanced quotes in inline command")
						return
					}
					done = true
				case i >= len(line):
					p.fail("unbalanced quotes in inline command")
					return
				default:
					put(c)
				}
			default:
				switch c {
				case ' ', '\n', '\r', '\t', 0:
					done = true
				case '"':
					inq = true
				case '\'':
					insq = true
				default:
					put(c)
				}
			}
			if i < len(line) {
				i++
			}
		}
		if slot >= 0 {
			p.argl[slot] = n
			if n > argCap {
				p.argl[slot] = argCap + 1
			}
		}
		argc++
	}
	if cap(p.line) > 4096 {
		p.line = nil
	}
	if argc > 0 {
		p.command(argc)
	}
}

// isSpace is C's isspace in the C locale.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// command handles one complete command with argc arguments; the first three are
// in p.args. Every command the server reads gets exactly one reply, except those
// classify marks kUnpair or kRaw.
func (p *reqParser) command(argc int64) {
	idx := p.idx
	p.idx++
	name := p.arg(0)
	if p.inMulti {
		// Redis runs these at once inside MULTI and queues everything else
		// (processCommand); MULTI and WATCH fail without ending the transaction.
		switch string(name) {
		case "exec":
			p.inMulti = false
			if len(p.multiPlan) > 0 && !p.multiOver {
				plan := &execPlan{n: p.multiN, items: append([]execItem(nil), p.multiPlan...)}
				if !p.c.enqueue(entry{idx: idx, kind: kExec, exec: plan}) {
					p.off = true
				}
			}
			return
		case "discard", "reset":
			p.inMulti = false
			return
		case "multi", "watch", "quit":
			return
		}
		pos := p.multiN
		p.multiN++
		k := p.classify(argc)
		switch k {
		case kNone:
		case kUnpair, kRaw:
			// Whatever these do inside a transaction, stop pairing.
			p.idx = idx
			p.stop(kUnpair)
		default:
			// The direct reply is +QUEUED unless the server is not in a
			// transaction after all (MULTI failed); then it is the real reply.
			if !p.c.enqueue(entry{idx: idx, kind: k}) {
				p.off = true
				return
			}
			if len(p.multiPlan) >= maxExecCmds {
				p.multiOver = true
				return
			}
			p.multiPlan = append(p.multiPlan, execItem{pos: pos, kind: k})
		}
		return
	}
	if string(name) == "multi" {
		p.inMulti = true
		p.multiN = 0
		p.multiOver = false
		p.multiPlan = p.multiPlan[:0]
		return
	}
	switch k := p.classify(argc); k {
	case kNone:
	case kUnpair, kRaw:
		p.idx = idx
		p.stop(k)
	default:
		if !p.c.enqueue(entry{idx: idx, kind: k}) {
			p.off = true
		}
	}
}

// classify says what the reply to the current command needs.
func (p *reqParser) classify(argc int64) kind {
	switch string(p.arg(0)) {
	case "cluster":
		if argc < 2 {
			return kNone
		}
		switch string(p.arg(1)) {
		case "slots":
			return kSlots
		case "shards":
			return kShards
		case "nodes":
			return kNodes
		case "replicas", "slaves":
			return kReplicas
		}
	case "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe", "monitor":
		return kUnpair
	case "client":
		if argc >= 2 && string(p.arg(1)) == "reply" {
			return kUnpair
		}
	case "sync", "psync":
		return kRaw
	}
	return kNone
}
