package resp

import (
	"bytes"
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
// input once it is understood.
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

	mode    int
	stack   []frame
	skip    int64 // bulk bytes still to come, without the trailing CRLF
	crlf    bool  // a bulk's CRLF comes next
	inLine  bool  // inside a simple line too long to hold; pass through to '\n'
	eof     bool
	growing bool // the value at r is a topology reply waiting for more input
	noGrow  bool // the value at r is too large to hold: frame it as usual

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

	for {
		if p.mode == modeRaw {
			return p.copyRaw(src)
		}
		// Make room: keep only the unparsed tail, at the front.
		if p.r > 0 {
			p.end = copy(p.buf, p.buf[p.r:p.end])
			p.r, p.w = 0, 0
		}
		if p.end == len(p.buf) {
			if p.growing && len(p.buf) < maxCapture {
				nb := make([]byte, min(2*len(p.buf), maxCapture))
				copy(nb, p.buf[:p.end])
				p.buf = nb
			} else {
				// Cannot hold the value whole: frame it as it streams by.
				p.noGrow = true
				p.parse()
				p.noGrow, p.growing = false, false
				if p.mode != modeRaw && p.r == 0 {
					p.fail(0, "no progress with a full buffer") // cannot happen
				}
				if p.mode == modeRaw {
					continue
				}
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
		if p.eof {
			// Whatever could not be parsed goes out as it is.
			p.r = p.end
		}
		if p.mode == modeRaw {
			continue
		}
		p.flush(p.r)
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
	// Entries for replies already gone by cannot be used (this does not happen
	// while requests and replies are paired correctly).
	i := 0
	for i < len(p.pend) && p.pend[i].idx < p.replyIdx {
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
	m := copy(p.pend, p.pend[n:])
	clear(p.pend[m:])
	p.pend = p.pend[:m]
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

// elemDone records the end of one complete value at the current depth.
func (p *replyParser) elemDone() {
	for n := len(p.stack); n > 0; n = len(p.stack) {
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
	p.topDone()
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
			p.elemDone()
			continue
		}
		if p.inLine {
			i := bytes.IndexByte(b[r:], '\n')
			if i < 0 {
				r = len(b)
				return r
			}
			r += i + 1
			p.inLine = false
			p.elemDone()
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
				p.elemDone()
				continue
			}
			if n <= int64(len(b)-h-2) {
				e := h + int(n)
				if b[e] != '\r' || b[e+1] != '\n' {
					p.fail(r, "bulk string not followed by CRLF")
					return r
				}
				r = e + 2
				p.elemDone()
				continue
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
				p.elemDone()
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
					p.elemDone()
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
			p.elemDone()
		default:
			p.fail(r, "unknown type byte")
			return r
		}
	}
	return r
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
	next, st := p.capture(b, r, e.kind)
	if st != stNeedMore {
		p.consume(1)
		if st == stHandled {
			p.topDone()
		} else {
			p.setNext()
		}
	}
	return next, st
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
	if p.execPos == len(items) {
		p.exec = nil
		return r, stNormal
	}
	it := items[p.execPos]
	if it.pos != pos {
		return r, stNormal
	}
	next, st := p.capture(b, r, it.kind)
	switch st {
	case stHandled:
		p.execPos++
		p.elemDone()
	case stNormal:
		p.execPos++
	}
	return next, st
}

// capture rewrites the whole value at b[r:] as a reply of kind k once it is all
// in the buffer.
func (p *replyParser) capture(b []byte, r int, k kind) (int, int) {
	if p.noGrow {
		p.noGrow, p.growing = false, false
		return r, stNormal
	}
	v, n, err := decode(b[r:], 0)
	if err == errIncomplete && !p.eof {
		p.growing = true
		return r, stNeedMore
	}
	p.growing = false
	if err != nil {
		return r, stNormal
	}
	p.rewriteAt(r, r+n, func(dst []byte) ([]byte, bool) {
		return p.c.appendRewrite(dst, k, b[r:r+n], &v)
	})
	return r + n, stHandled
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
