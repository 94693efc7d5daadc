package resp

import (
	"bytes"
	"errors"
	"slices"
	"strconv"
)

var (
	errIncomplete = errors.New("incomplete value")
	errInvalid    = errors.New("invalid value")
)

// maxValueDepth bounds the nesting of a topology reply that is decoded whole;
// CLUSTER replies are at most five deep.
const maxValueDepth = 16

// value is one decoded RESP value of a topology reply. Offsets are into the bytes
// given to decode.
type value struct {
	start  int // first byte, attributes included
	vstart int // first byte of the value itself, after any attribute
	end    int // after the value's last byte
	typ    byte
	null   bool
	str    []byte  // string and line types: the payload (verbatim strings with "txt:")
	elems  []value // aggregates; a map holds key, value, key, value...
}

// decode decodes the complete value at the start of b and reports its length.
func decode(b []byte, depth int) (value, int, error) {
	v, err := decodeAt(b, 0, depth)
	return v, v.end, err
}

func decodeAt(b []byte, r, depth int) (value, error) {
	v := value{start: r}
	if depth > maxValueDepth {
		return v, errInvalid
	}
	for r < len(b) && b[r] == '|' {
		n, h, ok := parseLen(b, r+1)
		if ok <= 0 || n < 0 {
			return v, lenErr(ok)
		}
		r = h
		for i := int64(0); i < 2*n; i++ {
			a, err := decodeAt(b, r, depth+1)
			if err != nil {
				return v, err
			}
			r = a.end
		}
	}
	if r >= len(b) {
		return v, errIncomplete
	}
	v.vstart, v.typ = r, b[r]
	switch v.typ {
	case '$', '=', '!':
		n, h, ok := parseLen(b, r+1)
		if ok <= 0 {
			return v, lenErr(ok)
		}
		if n < 0 {
			if n != -1 || v.typ != '$' {
				return v, errInvalid
			}
			v.null, v.end = true, h
			return v, nil
		}
		if n > int64(len(b)-h-2) {
			return v, errIncomplete
		}
		e := h + int(n)
		if b[e] != '\r' || b[e+1] != '\n' {
			return v, errInvalid
		}
		v.str, v.end = b[h:e], e+2
		return v, nil
	case '*', '~', '>', '%':
		n, h, ok := parseLen(b, r+1)
		if ok <= 0 {
			return v, lenErr(ok)
		}
		if n < 0 {
			if n != -1 || v.typ != '*' {
				return v, errInvalid
			}
			v.null, v.end = true, h
			return v, nil
		}
		if v.typ == '%' {
			n *= 2
		}
		// Every element takes at least three bytes.
		if n > int64(len(b)-h)/3+1 {
			return v, errIncomplete
		}
		v.elems = make([]value, 0, n)
		r = h
		for i := int64(0); i < n; i++ {
			e, err := decodeAt(b, r, depth+1)
			if err != nil {
				return v, err
			}
			v.elems = append(v.elems, e)
			r = e.end
		}
		v.end = r
		return v, nil
	case '+', '-', ':', '_', ',', '#', '(':
		i := bytes.IndexByte(b[r+1:], '\n')
		if i < 0 {
			return v, errIncomplete
		}
		nl := r + 1 + i
		if i == 0 || b[nl-1] != '\r' {
			return v, errInvalid
		}
		v.str, v.end = b[r+1:nl-1], nl+1
		v.null = v.typ == '_'
		return v, nil
	}
	return v, errInvalid
}

func lenErr(ok int) error {
	if ok == 0 {
		return errIncomplete
	}
	return errInvalid
}

func (v *value) isArray() bool {
	return (v.typ == '*' || v.typ == '~') && !v.null
}

// pairs reports whether v is a map: a RESP3 map, or a RESP2 array of key, value...
func (v *value) pairs() bool {
	return v.typ == '%' || v.isArray() && len(v.elems)%2 == 0
}

// isString reports whether v is a non-null string.
func (v *value) isString() bool {
	return v.typ == '$' && !v.null || v.typ == '+'
}

// text is the payload of a string, verbatim string or simple string, or nil.
func (v *value) text() ([]byte, bool) {
	switch {
	case v.isString():
		return v.str, true
	case v.typ == '=' && len(v.str) >= 4 && v.str[3] == ':':
		return v.str[4:], true
	}
	return nil, false
}

// integer is the decimal text of an integer reply, or nil.
func (v *value) integer() []byte {
	if v.typ != ':' || len(v.str) == 0 {
		return nil
	}
	return v.str
}

// get finds the value of key in a map.
func (v *value) get(key string) *value {
	if !v.pairs() {
		return nil
	}
	for i := 0; i+1 < len(v.elems); i += 2 {
		if k, ok := v.elems[i].text(); ok && string(k) == key {
			return &v.elems[i+1]
		}
	}
	return nil
}

// edit replaces src[start:end] by repl.
type edit struct {
	start, end int
	repl       []byte
}

// editor collects the edits of one value, in order.
type editor struct {
	edits []edit
}

// setText makes the string v hold s, keeping its type (a null becomes a bulk
// string).
func (e *editor) setText(v *value, s []byte) {
	if old, ok := v.text(); ok && bytes.Equal(old, s) {
		return
	}
	var out []byte
	switch v.typ {
	case '+':
		out = append(append(append(out, '+'), s...), '\r', '\n')
	case '=':
		out = append(out, '=')
		out = strconv.AppendInt(out, int64(len(s)+4), 10)
		out = append(out, '\r', '\n')
		out = append(out, v.str[:4]...)
		out = append(append(out, s...), '\r', '\n')
	default:
		out = appendBulk(out, s)
	}
	e.edits = append(e.edits, edit{v.vstart, v.end, out})
}

// setInt makes the integer v hold the decimal digits d.
func (e *editor) setInt(v *value, d []byte) {
	if bytes.Equal(v.str, d) {
		return
	}
	out := append(append([]byte{':'}, d...), '\r', '\n')
	e.edits = append(e.edits, edit{v.vstart, v.end, out})
}

// apply appends src with the edits made to dst.
func (e *editor) apply(dst, src []byte) []byte {
	slices.SortFunc(e.edits, func(a, b edit) int { return a.start - b.start })
	at := 0
	for _, ed := range e.edits {
		dst = append(dst, src[at:ed.start]...)
		dst = append(dst, ed.repl...)
		at = ed.end
	}
	return append(dst, src[at:]...)
}

func appendBulk(dst, s []byte) []byte {
	dst = append(dst, '$')
	dst = strconv.AppendInt(dst, int64(len(s)), 10)
	dst = append(dst, '\r', '\n')
	dst = append(dst, s...)
	return append(dst, '\r', '\n')
}
