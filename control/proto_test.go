package control

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

func TestProto_Frames(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, FrameHello, Hello{Target: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := WriteFrame(&b, FramePing, nil); err != nil {
		t.Fatal(err)
	}
	typ, p, err := ReadFrame(&b)
	if err != nil || typ != FrameHello || !strings.Contains(string(p), `"target":"x"`) {
		t.Fatalf("hello frame: %d %q %v", typ, p, err)
	}
	typ, p, err = ReadFrame(&b)
	if err != nil || typ != FramePing || len(p) != 0 {
		t.Fatalf("ping frame: %d %q %v", typ, p, err)
	}
	// A length over the limit is refused before any allocation.
	huge := []byte{byte(FrameTopology), 0xff, 0xff, 0xff, 0xff}
	if _, _, err := ReadFrame(bytes.NewReader(huge)); !errors.Is(err, ErrFrameSize) {
		t.Fatalf("huge frame: got %v, want ErrFrameSize", err)
	}
	if err := WriteFrame(io.Discard, FrameTopology, make([]byte, MaxServerFrameSize+1)); !errors.Is(err, ErrFrameSize) {
		t.Fatalf("writing a huge frame: got %v", err)
	}
}

// TestProto_FrameSizeCheckedBeforeAllocation: issue 10 finding 7. A frame
// header from a client declaring 1 MiB (the old limit, allocated up front)
// is refused with ErrFrameSize after reading its 5 header bytes and
// allocating nothing; the limit is MaxFrameSize = 64 KiB.
func TestProto_FrameSizeCheckedBeforeAllocation(t *testing.T) {
	if MaxFrameSize != 64<<10 {
		t.Fatalf("MaxFrameSize = %d, want 64 KiB", MaxFrameSize)
	}
	hdr := []byte{byte(FrameHello), 0, 0x10, 0, 0} // 1 MiB
	r := &countingReader{data: append(hdr, make([]byte, 1<<20)...)}
	if _, _, err := ReadFrame(r); !errors.Is(err, ErrFrameSize) {
		t.Fatalf("1 MiB frame: got %v, want ErrFrameSize", err)
	}
	if r.n != 5 {
		t.Fatalf("read %d bytes of a refused frame, want only its 5-byte header", r.n)
	}
	rd := bytes.NewReader(hdr)
	allocs := testing.AllocsPerRun(100, func() {
		rd.Reset(hdr)
		_, _, _ = ReadFrameLimit(rd, MaxFrameSize)
	})
	// The error value itself (fmt.Errorf: the wrapper and its string)
	// allocates a few small objects; the payload would be one of 1 MiB.
	var ms1, ms2 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	for range 100 {
		rd.Reset(hdr)
		_, _, _ = ReadFrame(rd)
	}
	runtime.ReadMemStats(&ms2)
	perRun := (ms2.TotalAlloc - ms1.TotalAlloc) / 100
	t.Logf("refusing a 1 MiB header: %.0f allocations, %d bytes per call", allocs, perRun)
	if perRun > 1024 {
		t.Fatalf("refusing a 1 MiB header allocated %d bytes per call, want at most 1 KiB", perRun)
	}

	// A server frame may be 1 MiB, but a peer that declares it and sends
	// 10 bytes makes the reader allocate at most one 64 KiB chunk.
	big := []byte{byte(FrameTopology), 0, 0x10, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	runtime.ReadMemStats(&ms1)
	for range 10 {
		if _, _, err := ReadServerFrame(bytes.NewReader(big)); err == nil {
			t.Fatal("short 1 MiB frame: no error")
		}
	}
	runtime.ReadMemStats(&ms2)
	if perRun := (ms2.TotalAlloc - ms1.TotalAlloc) / 10; perRun > 64<<10+1024 {
		t.Fatalf("a declared-but-unsent 1 MiB server frame allocated %d bytes, want at most 65 KiB", perRun)
	}
	// And a real 1 MiB server frame still round-trips.
	var b bytes.Buffer
	payload := bytes.Repeat([]byte("x"), MaxServerFrameSize)
	if err := WriteFrame(&b, FrameTopology, payload); err != nil {
		t.Fatal(err)
	}
	if _, p, err := ReadServerFrame(&b); err != nil || !bytes.Equal(p, payload) {
		t.Fatalf("1 MiB server frame: %d bytes, %v", len(p), err)
	}
}

type countingReader struct {
	data []byte
	n    int
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.n >= len(c.data) {
		return 0, io.EOF
	}
	k := copy(p, c.data[c.n:])
	c.n += k
	return k, nil
}

// FuzzReadFrame: control frames from a peer never panic, never return more
// than the limit (MaxFrameSize from clients, MaxServerFrameSize from the
// gateway), never read past the frame, and a refused length is refused
// after the 5-byte header alone.
func FuzzReadFrame(f *testing.F) {
	var b bytes.Buffer
	_ = WriteJSON(&b, FrameWelcome, Welcome{OK: true, Target: &TargetInfo{Name: "x", Nodes: []NodeInfo{{Addr: "a:1"}}}})
	f.Add(b.Bytes())
	f.Add([]byte{byte(FramePing), 0, 0, 0, 0})
	f.Add([]byte{byte(FrameHello), 0xff, 0xff, 0xff, 0xff})          // 4 GiB
	f.Add([]byte{byte(FrameHello), 0, 0x10, 0, 0})                   // 1 MiB, the old limit
	f.Add([]byte{byte(FrameHello), 0, 1, 0, 0})                      // exactly 64 KiB, no body
	f.Add([]byte{byte(FrameHello), 0, 1, 0, 1})                      // 64 KiB + 1
	f.Add([]byte{byte(FrameTopology), 0, 0, 0, 3, '{', '}', ' ', 9}) // trailing byte
	f.Add([]byte{byte(FrameHello), 0, 0})                            // short header
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, limit := range []int{MaxFrameSize, MaxServerFrameSize} {
			r := &countingReader{data: in}
			typ, p, err := ReadFrameLimit(r, limit)
			if errors.Is(err, ErrFrameSize) && r.n != 5 {
				t.Fatalf("refused frame read %d bytes, want its 5-byte header only", r.n)
			}
			if err != nil {
				continue
			}
			if len(p) > limit || r.n != 5+len(p) || typ != FrameType(in[0]) {
				t.Fatalf("bad frame decode: type %d len %d from %d bytes (read %d)", typ, len(p), len(in), r.n)
			}
		}
	})
}

// TestProto_FrameReaderReuses: a FrameReader reads the frames of a stream
// as ReadFrameLimit does, with the same limit; a payload of at most 4 KiB
// lands in the reader's own buffer, so that reading a churn's Fins and
// acks allocates nothing per frame, and a larger one is a slice of its
// own that the next Read leaves alone.
func TestProto_FrameReaderReuses(t *testing.T) {
	var b bytes.Buffer
	fin := AppendFin(nil, 7, 42)
	big := bytes.Repeat([]byte{'x'}, frameReuse+1)
	for _, f := range []struct {
		typ FrameType
		p   []byte
	}{{FrameFin, fin}, {FrameTopology, big}, {FrameFin, fin}, {FramePing, nil}} {
		if err := WriteFrame(&b, f.typ, f.p); err != nil {
			t.Fatal(err)
		}
	}
	fr := NewFrameReader(&b, MaxServerFrameSize)
	typ, p1, err := fr.Read()
	if err != nil || typ != FrameFin || !bytes.Equal(p1, fin) {
		t.Fatalf("first fin: %d %x %v", typ, p1, err)
	}
	typ, p2, err := fr.Read()
	if err != nil || typ != FrameTopology || !bytes.Equal(p2, big) {
		t.Fatalf("big frame: %d, %d bytes, %v", typ, len(p2), err)
	}
	typ, p3, err := fr.Read()
	if err != nil || typ != FrameFin || !bytes.Equal(p3, fin) {
		t.Fatalf("second fin: %d %x %v", typ, p3, err)
	}
	if &p1[0] != &p3[0] {
		t.Error("the two Fins were read into different buffers, want the reader's one")
	}
	if !bytes.Equal(p2, big) {
		t.Error("a Read after a frame over 4 KiB overwrote that frame's payload")
	}
	if typ, p, err := fr.Read(); err != nil || typ != FramePing || len(p) != 0 {
		t.Fatalf("ping: %d %q %v", typ, p, err)
	}
	if _, _, err := fr.Read(); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}

	frame := AppendFrame(nil, FrameFin, fin)
	rd := bytes.NewReader(frame)
	fr = NewFrameReader(rd, MaxFrameSize)
	if allocs := testing.AllocsPerRun(100, func() {
		rd.Reset(frame)
		if _, _, err := fr.Read(); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("reading a Fin: %.0f allocations per frame, want 0", allocs)
	}

	huge := []byte{byte(FrameHello), 0, 0x10, 0, 0}
	if _, _, err := NewFrameReader(bytes.NewReader(huge), MaxFrameSize).Read(); !errors.Is(err, ErrFrameSize) {
		t.Fatalf("1 MiB frame from a client: got %v, want ErrFrameSize", err)
	}
}
