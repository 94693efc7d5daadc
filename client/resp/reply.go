package resp

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
)

// Reply-side modes.
const (
	modePaired   = iota // replies are numbered and paired with requests
	modeUnpaired        // replies are framed, only top-level redirect errors are rewritten
	modeRaw             // bytes are copied, nothing is parsed
)

// Kinds of open aggregate on the framing stack.
const (
	fAgg  = iota // array, set, map: an element of its parent
	fAttr        // RESP3 attribute: annotates the value that follows it
	fPush        // RESP3 push at top level: not a reply
)

type frame struct {
	n    int64 // elements still to come
	kind uint8
}

// Results of the slow path at the start of a value.
const (
	stNormal   = iota // frame the value as usual
	stHandled         // the value was consumed
	stNeedMore        // more input is needed first
	stRaw             // switch to modeRaw at this position
)

// replyParser frames the server's replies. Input is read into buf; bytes before
// w have been written; [w, r) are parsed and waiting to be written, unchanged
// unless obuf holds output (then obuf goes first); [r, end) are not parsed yet.
// Everything parsed is written before the next read, so nothing waits for more
// input once it is understood, except a topology reply being held whole.
type replyParser struct {
	c    *Conn
	dst  io.Writer
	base []byte // pooled buffer; buf is base unless grown to hold a topology reply
	buf  []byte
	r, w int
	end  int
	obuf []byte

	written int64
	werr    error

	mode   int
	stack  []frame
	skip   int64 // bulk bytes still to come, without the trailing CRLF
	crlf   bool  // a bulk's CRLF comes next
	inLine bool  // inside a simple line too long to hold; pass through to '\n'
	lastCR bool  // inLine, and the last byte passed was '\r'
	eof    bool

	// A topology reply being held: it starts at capStart (-1: none), at stack
	// depth capDepth, and is rewritten as a reply of capKind once complete.
	capStart int
	capDepth int
	capKind  kind

	replyIdx int64   // number of the reply at top level
	pend     []entry // entries from the request side, not yet used
	nextIdx  int64   // pend[0].idx, or MaxInt64

	exec    *execPlan // EXEC array being framed at stack[0], or nil
	execPos int       // next item of exec
}

// CopyReplies copies server-to-client bytes from src to dst, rewriting node
// addresses (see the package documentation). It writes what it has read and
// parsed before reading again. It returns when src returns an error (nil for
// io.EOF) or dst fails.
func (c *Conn) CopyReplies(dst io.Writer, src io.Reader) (int64, error) {
	p := &c.rep
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	p.dst = dst
	p.base = *bp
	p.buf = p.base
	p.nextIdx = math.MaxInt64
	if p.stack == nil {
		p.stack = make([]frame, 0, 16)
	}
	if c.opts.Map == nil {
		p.mode = modeRaw
	}
	defer func() { p.buf, p.base, p.dst = nil, nil, nil }()

	p.capStart = -1
	for {
		if p.mode == modeRaw {
			return p.copyRaw(src)
		}
		// Make room: keep only what is not written yet, at the front.
		if p.w > 0 {
			p.end = copy(p.buf, p.buf[p.w:p.end])
			p.r -= p.w
			if p.capStart >= 0 {
				p.capStart -= p.w
			}
			p.w = 0
		}
		if p.end == len(p.buf) {
			// Only a held reply can fill the buffer.
			if len(p.buf) < maxCapture {
				nb := make([]byte, min(2*len(p.buf), maxCapture))
				copy(nb, p.buf[:p.end])
				p.buf = nb
			} else {
				if p.capStart < 0 {
					p.fail(p.r, "no progress") // cannot happen: only held replies are large
					continue
				}
				p.c.log.Debug("topology reply too large to rewrite; passing it on unchanged")
				p.capStart = -1
				p.flush(p.r)
				if p.werr != nil {
					return p.written, p.werr
				}
				continue
			}
		} else if p.end == 0 && len(p.buf) != len(p.base) {
			p.buf = p.base
		}
		n, rerr := src.Read(p.buf[p.end:])
		p.end += n
		if rerr != nil {
			p.eof = true
		}
		if n > 0 {
			if c.queued.Load() != 0 {
				p.pend = c.takeQueue(p.pend)
				p.setNext()
			}
			p.parse()
		}
		if p.mode == modeRaw {
			continue
		}
		if p.eof {
			// Whatever could not be parsed goes out as it is.
			p.r, p.capStart = p.end, -1
		}
		upto := p.r
		if p.capStart >= 0 {
			upto = p.capStart
		}
		p.flush(upto)
		if p.werr != nil {
			return p.written, p.werr
		}
		if rerr != nil {
			if rerr == io.EOF {
				return p.written, nil
			}
			return p.written, rerr
		}
	}
}

// copyRaw writes everything not yet written and copies the rest of src.
func (p *replyParser) copyRaw(src io.Reader) (int64, error) {
	p.c.replyRaw.Store(true)
	p.flush(p.end)
	if p.werr != nil {
		return p.written, p.werr
	}
	if p.eof {
		return p.written, nil
	}
	n, err := io.CopyBuffer(p.dst, src, p.base)
	p.written += n
	return p.written, err
}

// flush writes obuf and buf[w:upto].
func (p *replyParser) flush(upto int) {
	if p.werr != nil {
		return
	}
	out := p.buf[p.w:upto]
	if len(p.obuf) > 0 {
		p.obuf = append(p.obuf, out...)
		out = p.obuf
	}
	p.w = upto
	if len(out) == 0 {
		return
	}
	n, err := p.dst.Write(out)
	p.written += int64(n)
	if err == nil && n != len(out) {
		err = io.ErrShortWrite
	}
	p.werr = err
	p.obuf = p.obuf[:0]
	if cap(p.obuf) > bufSize {
		p.obuf = nil
	}
}

// rewriteAt makes the bytes buf[a:b], which lie in [w, end), go out as whatever
// appendNew appends, unless it reports no change.
func (p *replyParser) rewriteAt(a, b int, appendNew func(dst []byte) ([]byte, bool)) {
	mark := len(p.obuf)
	p.obuf = append(p.obuf, p.buf[p.w:a]...)
	out, ok := appendNew(p.obuf)
	if !ok {
		p.obuf = p.obuf[:mark]
		return
	}
	p.obuf = out
	p.w = b
}

func (p *replyParser) setNext() {
	// Entries for replies already gone by cannot be used. A rewrite is merely
	// lost; a reply that ended pairing cannot be told apart any more.
	i := 0
	for i < len(p.pend) && p.pend[i].idx < p.replyIdx {
		if k := p.pend[i].kind; k == kUnpair || k == kRaw {
			p.unpair()
			return
		}
		i++
	}
	if i > 0 {
		p.consume(i)
	}
	if len(p.pend) > 0 {
		p.nextIdx = p.pend[0].idx
	} else {
		p.nextIdx = math.MaxInt64
	}
}

// consume drops the first n entries.
func (p *replyParser) consume(n int) {
	p.c.outstanding.Add(-int64(n))
	clear(p.pend[:n])
	p.pend = p.pend[n:] // append reallocates once the front is used up
}

// unpair stops pairing for the rest of the connection.
func (p *replyParser) unpair() {
	p.mode = modeUnpaired
	p.exec = nil
	p.c.outstanding.Add(-int64(len(p.pend)))
	p.pend = nil
	p.nextIdx = math.MaxInt64
}

// fail gives up parsing: from r on the stream is copied unchanged.
func (p *replyParser) fail(r int, why string) {
	p.c.log.Debug("cannot frame replies; copying the rest unchanged", "reason", why)
	p.mode = modeRaw
	p.r = r
}

// topDone records the end of a top-level value that is a reply.
func (p *replyParser) topDone() {
	p.replyIdx++
	p.exec = nil
	if p.replyIdx > p.nextIdx {
		p.setNext()
	}
}

// elemDone records the end of one complete value, which ends at r.
func (p *replyParser) elemDone(r int) {
	for {
		n := len(p.stack)
		if n == p.capDepth && p.capStart >= 0 {
			p.captured(r)
		}
		if n == 0 {
			p.topDone()
			return
		}
		f := &p.stack[n-1]
		f.n--
		if f.n > 0 {
			return
		}
		k := f.kind
		p.stack = p.stack[:n-1]
		if k == fAttr {
			return // the annotated value follows
		}
		if k == fPush && n == 1 {
			return // pushes are not replies
		}
	}
}

// captured rewrites the held reply, now complete at buf[capStart:r].
func (p *replyParser) captured(r int) {
	a := p.capStart
	p.capStart = -1
	frame := p.buf[a:r]
	v, n, err := decode(frame, 0)
	if err != nil || n != len(frame) {
		return
	}
	p.rewriteAt(a, r, func(dst []byte) ([]byte, bool) {
		return p.c.appendRewrite(dst, p.capKind, frame, &v)
	})
}

// push opens an aggregate of n > 0 elements.
func (p *replyParser) push(n int64, k uint8) bool {
	if len(p.stack) >= maxDepth {
		return false
	}
	p.stack = append(p.stack, frame{n: n, kind: k})
	return true
}

// parse frames as much of buf[r:end] as it can.
func (p *replyParser) parse() {
	r := p.frame(p.buf[:p.end], p.r)
	if p.mode != modeRaw {
		p.r = r
	}
}

// frame frames values from b[r:] and returns where it stopped. On a switch to
// modeRaw, p.r says where the raw bytes start.
func (p *replyParser) frame(b []byte, r int) int {
	for r < len(b) {
		if len(p.stack) == 0 && p.skip == 0 && !p.crlf && !p.inLine {
			r = p.fastTop(b, r)
			if r == len(b) {
				break
			}
		}
		if p.skip > 0 {
			avail := int64(len(b) - r)
			if avail <= p.skip {
				p.skip -= avail
				r = len(b)
				if p.skip == 0 {
					p.crlf = true
				}
				return r
			}
			r += int(p.skip)
			p.skip = 0
			p.crlf = true
		}
		if p.crlf {
			if len(b)-r < 2 {
				return r
			}
			if b[r] != '\r' || b[r+1] != '\n' {
				p.fail(r, "bulk string not followed by CRLF")
				return r
			}
			r += 2
			p.crlf = false
			p.elemDone(r)
			continue
		}
		if p.inLine {
			i := bytes.IndexByte(b[r:], '\n')
			if i < 0 {
				p.lastCR = b[len(b)-1] == '\r'
				r = len(b)
				return r
			}
			if i > 0 && b[r+i-1] != '\r' || i == 0 && !p.lastCR {
				p.fail(r+i, "line not ended by CRLF")
				return r
			}
			r += i + 1
			p.inLine = false
			p.elemDone(r)
			continue
		}

		typ := b[r]
		// The start of a value: the slow path if it may need work.
		if (len(p.stack) == 0 && (typ == '-' || p.replyIdx == p.nextIdx)) ||
			(p.exec != nil && len(p.stack) == 1) {
			next, st := p.start(b, r)
			switch st {
			case stHandled:
				r = next
				continue
			case stNeedMore:
				return r
			case stRaw:
				p.r = r
				return r
			}
		}

		switch typ {
		case '$', '=', '!':
			n, h, ok := parseLen(b, r+1)
			if ok <= 0 {
				if ok < 0 {
					p.fail(r, "bad string header")
				}
				return r
			}
			if n < 0 {
				if n != -1 || typ != '$' {
					p.fail(r, "bad string length")
					return r
				}
				r = h
				p.elemDone(r)
				continue
			}
			if n <= int64(len(b)-h-2) {
				e := h + int(n)
				if b[e] != '\r' || b[e+1] != '\n' {
					p.fail(r, "bulk string not followed by CRLF")
					return r
				}
				r = e + 2
				p.elemDone(r)
				continue
			}
			if p.capStart >= 0 && n > maxCapture {
				p.capStart = -1 // too large to rewrite: let it stream
			}
			r = h
			p.skip = n
			if n == 0 {
				p.crlf = true
			}
		case '*', '~', '>', '%', '|':
			n, h, ok := parseLen(b, r+1)
			if ok <= 0 {
				if ok < 0 {
					p.fail(r, "bad aggregate header")
				}
				return r
			}
			if n < 0 {
				if n != -1 || typ != '*' {
					p.fail(r, "bad aggregate length")
					return r
				}
				r = h
				p.elemDone(r)
				continue
			}
			k := uint8(fAgg)
			switch typ {
			case '%':
				n *= 2
			case '|':
				n *= 2
				k = fAttr
			case '>':
				if len(p.stack) == 0 {
					k = fPush
				}
			}
			r = h
			if n == 0 {
				if k == fAgg {
					p.elemDone(r)
				}
				continue
			}
			if !p.push(n, k) {
				p.fail(r, "replies nested too deeply")
				return r
			}
		case '+', '-', ':', '_', ',', '#', '(':
			i := bytes.IndexByte(b[r+1:], '\n')
			if i < 0 {
				if len(b)-r >= maxLine {
					p.inLine = true
					p.lastCR = b[len(b)-1] == '\r'
					r = len(b)
				}
				return r
			}
			nl := r + 1 + i
			if i == 0 || b[nl-1] != '\r' {
				p.fail(r, "line not ended by CRLF")
				return r
			}
			r = nl + 1
			p.elemDone(r)
		default:
			p.fail(r, "unknown type byte")
			return r
		}
	}
	return r
}

// fastTop frames top-level bulk strings, simple strings, integers and nulls that
// need no work, the replies of a pipeline of GETs and SETs, and returns where it
// stopped: at the end of b, or at a value for the general code.
func (p *replyParser) fastTop(b []byte, r int) int {
	idx, next := p.replyIdx, p.nextIdx
	// Pipelined replies often repeat the previous bulk string's header: then one
	// comparison frames the reply, and the next position does not depend on
	// parsing this one.
	var hdr, mask uint64
	var size int
	for r < len(b) && idx != next {
		if size > 0 && len(b)-r >= max(size, 8) &&
			binary.LittleEndian.Uint64(b[r:])&mask == hdr && b[r+size-2] == '\r' && b[r+size-1] == '\n' {
			r += size
			idx++
			continue
		}
		switch b[r] {
		case '$':
			if len(b)-r < 5 {
				p.replyIdx = idx
				return r
			}
			var i, n int
			if d := b[r+1] - '0'; d <= 9 && b[r+2] == '\r' {
				i, n = r+2, int(d) // one digit, the common case
			} else if d <= 9 && b[r+3] == '\r' {
				if d2 := b[r+2] - '0'; d2 <= 9 {
					i, n = r+3, int(d)*10+int(d2)
				}
			} else if b[r+1] == '-' && b[r+2] == '1' && b[r+3] == '\r' && b[r+4] == '\n' {
				r += 5 // null
				break
			}
			if i == 0 {
				for i = r + 1; i < len(b) && i-r <= 10; i++ {
					d := b[i] - '0'
					if d > 9 {
						break
					}
					n = n*10 + int(d)
				}
			}
			e := i + 2 + n
			if i == r+1 || e+2 > len(b) || b[i] != '\r' || b[i+1] != '\n' || b[e] != '\r' || b[e+1] != '\n' {
				p.replyIdx = idx
				return r
			}
			if hl := i + 2 - r; hl <= 8 && len(b)-r >= 8 {
				mask = 1<<(8*hl) - 1
				hdr = binary.LittleEndian.Uint64(b[r:]) & mask
				size = e + 2 - r
			}
			r = e + 2
		case '+', ':', '_':
			// Short lines; long ones go to the general code.
			e := min(r+32, len(b))
			i := r + 1
			for i < e && b[i] != '\n' {
				i++
			}
			if i == e || b[i-1] != '\r' || i == r+1 {
				p.replyIdx = idx
				return r
			}
			r = i + 1
		default:
			p.replyIdx = idx
			return r
		}
		idx++
	}
	p.replyIdx = idx
	if idx > next {
		p.setNext()
	}
	return r
}

// parseLenFast is parseLen, quicker for the usual one- and two-digit numbers.
func parseLenFast(b []byte, i int) (n int64, next int, ok int) {
	if i+3 < len(b) {
		d := b[i] - '0'
		if d <= 9 && b[i+1] == '\r' && b[i+2] == '\n' {
			return int64(d), i + 3, 1
		}
		if d2 := b[i+1] - '0'; d <= 9 && d2 <= 9 && b[i+2] == '\r' && b[i+3] == '\n' {
			return int64(d)*10 + int64(d2), i + 4, 1
		}
	}
	return parseLen(b, i)
}

// parseLen parses "<int>\r\n" at b[i:]. ok is 1 with the value and the index
// after the CRLF, 0 if b ends first, -1 if the bytes are not a number.
func parseLen(b []byte, i int) (n int64, next int, ok int) {
	neg := false
	if i < len(b) && b[i] == '-' {
		neg = true
		i++
	}
	start := i
	for ; i < len(b); i++ {
		c := b[i]
		if c < '0' || c > '9' {
			break
		}
		if i-start == 18 {
			return 0, 0, -1
		}
		n = n*10 + int64(c-'0')
	}
	if i+1 >= len(b) {
		if i < len(b) && b[i] != '\r' {
			return 0, 0, -1
		}
		return 0, 0, 0
	}
	if i == start || b[i] != '\r' || b[i+1] != '\n' {
		return 0, 0, -1
	}
	if neg {
		n = -n
	}
	return n, i + 2, 1
}

// start is the slow path at the start of a value at b[r] that may need work: a
// top-level error, the reply an entry is about, or an element of an EXEC array
// being followed.
func (p *replyParser) start(b []byte, r int) (int, int) {
	typ := b[r]
	if len(p.stack) == 1 {
		return p.startExecElem(b, r)
	}
	if typ == '-' {
		return p.errorLine(b, r)
	}
	if typ == '>' || typ == '|' {
		return r, stNormal // not a reply, or not the reply yet
	}
	e := p.pend[0]
	switch e.kind {
	case kUnpair:
		p.unpair()
		return r, stNormal
	case kRaw:
		p.consume(1)
		p.c.log.Debug("replication stream; copying the rest unchanged")
		p.mode = modeRaw
		return r, stRaw
	case kExec:
		if typ != '*' {
			p.consume(1)
			p.setNext()
			return r, stNormal
		}
		n, _, ok := parseLen(b, r+1)
		if ok == 0 && !p.eof {
			return r, stNeedMore
		}
		p.consume(1)
		p.setNext()
		if ok == 1 && n == e.exec.n {
			p.exec = e.exec
			p.execPos = 0
		}
		return r, stNormal
	}
	p.consume(1)
	p.setNext()
	p.hold(r, 0, e.kind)
	return r, stNormal
}

// startExecElem handles the start of an element of the EXEC array being followed.
func (p *replyParser) startExecElem(b []byte, r int) (int, int) {
	if b[r] == '|' {
		return r, stNormal
	}
	pos := p.exec.n - p.stack[0].n
	items := p.exec.items
	for p.execPos < len(items) && items[p.execPos].pos < pos {
		p.execPos++
	}
	switch {
	case p.execPos == len(items):
		p.exec = nil
	case items[p.execPos].pos == pos:
		p.hold(r, 1, items[p.execPos].kind)
		p.execPos++
	}
	return r, stNormal
}

// hold starts holding the value at r, at stack depth depth, to rewrite it as a
// reply of kind k once complete.
func (p *replyParser) hold(r, depth int, k kind) {
	p.capStart, p.capDepth, p.capKind = r, depth, k
}

// errorLine handles a top-level error reply, rewriting a redirect.
func (p *replyParser) errorLine(b []byte, r int) (int, int) {
	lim := min(len(b), r+maxLine)
	i := bytes.IndexByte(b[r:lim], '\n')
	if i < 0 {
		if lim == len(b) && !p.eof {
			return r, stNeedMore
		}
		return r, stNormal
	}
	nl := r + i
	if i < 2 || b[nl-1] != '\r' {
		return r, stNormal // the framing code fails on it
	}
	// It is a reply.
	if p.replyIdx == p.nextIdx {
		switch p.pend[0].kind {
		case kUnpair:
			p.unpair()
		case kRaw:
			p.consume(1)
			p.mode = modeRaw
			return r, stRaw
		default:
			p.consume(1)
			p.setNext()
		}
	}
	p.rewriteAt(r, nl+1, func(dst []byte) ([]byte, bool) {
		return p.c.appendRedirect(dst, b[r+1:nl-1])
	})
	p.topDone()
	return nl + 1, stHandled
}
