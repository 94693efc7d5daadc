package tunnel

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
)

// nopCloser gives a reader the ReadWriteCloser the gate wraps.
type nopCloser struct{ io.Reader }

func (nopCloser) Write(p []byte) (int, error) { return len(p), nil }
func (nopCloser) Close() error                { return nil }

func yamuxFrame(typ byte, flags uint16, id, length uint32, body []byte) []byte {
	h := make([]byte, yamuxHeaderSize, yamuxHeaderSize+len(body))
	h[1] = typ
	binary.BigEndian.PutUint16(h[2:], flags)
	binary.BigEndian.PutUint32(h[4:], id)
	binary.BigEndian.PutUint32(h[8:], length)
	return append(h, body...)
}

// FuzzPreAuthGate: the gate parses yamux frame headers a peer controls.
// It never panics; what it passes before authentication is a prefix of
// the input made only of whole frames of stream 0 and of the first stream
// opened, with at most MaxPreAuthControlBytes of control payload (a frame
// cut short by the end of input may end it); after Authenticated it passes
// everything unchanged.
func FuzzPreAuthGate(f *testing.F) {
	ctl := yamuxFrame(1, yamuxFlagSYN, 1, 0, nil)
	f.Add(append(ctl, yamuxFrame(0, 0, 1, 3, []byte("abc"))...), uint8(5))                             // control stream data
	f.Add(append(ctl, yamuxFrame(0, yamuxFlagSYN, 3, 4, []byte("evil"))...), uint8(1))                 // a second stream
	f.Add(append(yamuxFrame(2, yamuxFlagSYN, 0, 7, nil), ctl...), uint8(12))                           // ping first
	f.Add(yamuxFrame(0, 0, 5, 4, []byte("data")), uint8(3))                                            // data before any SYN
	f.Add(append(ctl, yamuxFrame(0, 0, 1, 0xffffffff, []byte("x"))...), uint8(64))                     // huge control frame
	f.Add(append([]byte{1, 0}, make([]byte, 10)...), uint8(12))                                        // bad version
	f.Add(append(ctl, yamuxFrame(9, 0, 1, 0, nil)...), uint8(2))                                       // bad type
	f.Add(append(ctl, yamuxFrame(1, 0, 3, 0, nil)...), uint8(7))                                       // window update, other stream
	f.Add(append(ctl, yamuxFrame(0, 0, 1, MaxPreAuthControlBytes+1, make([]byte, 16))...), uint8(200)) // over the cap
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		n := int(chunk)%64 + 1
		for _, authed := range []bool{false, true} {
			g := newPreAuthGate(nopCloser{bytes.NewReader(in)})
			if authed {
				g.Authenticated()
			} else {
				g.shut.Do(func() { close(g.closed) }) // a held frame returns at once
			}
			var out []byte
			buf := make([]byte, n)
			for range len(in) + 2 {
				k, err := g.Read(buf)
				out = append(out, buf[:k]...)
				if err != nil {
					break
				}
			}
			if !bytes.HasPrefix(in, out) {
				t.Fatalf("gate passed bytes that are not a prefix of the input")
			}
			if authed {
				if !bytes.Equal(out, in) {
					t.Fatalf("after Authenticated the gate passed %d of %d bytes", len(out), len(in))
				}
				continue
			}
			var control uint32
			ctrlIn := 0
			for p := out; len(p) >= yamuxHeaderSize; {
				h := p[:yamuxHeaderSize]
				if h[0] != yamuxVersion || h[1] > yamuxTypeMax {
					break // yamux ends the session on it
				}
				id := binary.BigEndian.Uint32(h[4:])
				flags := binary.BigEndian.Uint16(h[2:])
				if control == 0 && id != 0 && flags&yamuxFlagSYN != 0 {
					control = id
				}
				if id != 0 && id != control {
					t.Fatalf("frame of stream %d passed before authentication (control stream %d)", id, control)
				}
				p = p[yamuxHeaderSize:]
				if h[1] == yamuxTypeData {
					l := int(binary.BigEndian.Uint32(h[8:]))
					if id == control {
						ctrlIn += l
						if ctrlIn > MaxPreAuthControlBytes {
							t.Fatalf("%d control bytes passed before authentication, max %d", ctrlIn, MaxPreAuthControlBytes)
						}
					}
					p = p[min(l, len(p)):]
				}
			}
		}
	})
}
