package tunnel

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

func TestProto_HeaderRoundTrip(t *testing.T) {
	for _, req := range []OpenRequest{
		{Kind: KindControl, Target: "prod-redis"},
		{Kind: KindProxy, Target: "prod-redis", Node: "10.0.1.231:6379"},
		{Kind: KindProxy, Target: strings.Repeat("t", 255), Node: strings.Repeat("n", 255)},
		{Kind: KindProxy},
	} {
		b, err := AppendHeader(nil, req)
		if err != nil {
			t.Fatal(err)
		}
		// Payload behind the header must stay unread.
		r := iotest.OneByteReader(bytes.NewReader(append(b, "PAYLOAD"...)))
		got, err := ReadHeader(r)
		if err != nil {
			t.Fatalf("ReadHeader(%+v): %v", req, err)
		}
		if got != req {
			t.Fatalf("got %+v, want %+v", got, req)
		}
		rest, _ := io.ReadAll(r)
		if string(rest) != "PAYLOAD" {
			t.Fatalf("ReadHeader consumed payload: rest %q", rest)
		}
	}
}

func TestProto_HeaderErrors(t *testing.T) {
	if _, err := AppendHeader(nil, OpenRequest{Kind: KindProxy, Target: strings.Repeat("x", 256)}); !errors.Is(err, ErrTooLong) {
		t.Fatalf("long target: got %v, want ErrTooLong", err)
	}
	cases := map[string]struct {
		in   []byte
		want error
	}{
		"bad magic":   {[]byte("GET / HTTP/1.1\r\n"), ErrBadMagic},
		"bad version": {[]byte{'C', 'T', 9, 2, 0, 0}, ErrBadVersion},
		"bad kind":    {[]byte{'C', 'T', 1, 7, 0, 0}, ErrBadKind},
		"truncated":   {[]byte{'C', 'T', 1, 2, 5, 0, 'a'}, io.ErrUnexpectedEOF},
		"empty":       {nil, io.EOF},
	}
	for name, tc := range cases {
		if _, err := ReadHeader(bytes.NewReader(tc.in)); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", name, err, tc.want)
		}
	}
}

func TestProto_Status(t *testing.T) {
	var b bytes.Buffer
	b.Write(AppendStatus(nil, StatusOK, ""))
	b.Write(AppendStatus(nil, StatusDenied, "key may not use target"))
	b.Write(AppendStatus(nil, StatusUnreachable, strings.Repeat("m", 5000)))
	if err := ReadStatus(&b); err != nil {
		t.Fatalf("ok status: %v", err)
	}
	err := ReadStatus(&b)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != StatusDenied || se.Message != "key may not use target" {
		t.Fatalf("denied status: got %v", err)
	}
	if err := ReadStatus(&b); !errors.As(err, &se) || len(se.Message) != 1024 {
		t.Fatalf("long message: got %v", err)
	}
}

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
	huge := []byte{FrameTopology, 0xff, 0xff, 0xff, 0xff}
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
	hdr := []byte{FrameHello, 0, 0x10, 0, 0} // 1 MiB
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
	big := []byte{FrameTopology, 0, 0x10, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
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

// FuzzReadHeader: a peer controls these bytes; the decoder must never
// panic, never read past the header, and round-trip what it accepts.
func FuzzReadHeader(f *testing.F) {
	seed := func(r OpenRequest) []byte { b, _ := AppendHeader(nil, r); return b }
	f.Add(seed(OpenRequest{Kind: KindControl, Target: "prod"}))
	f.Add(seed(OpenRequest{Kind: KindProxy, Target: "prod", Node: "10.0.1.1:6379"}))
	f.Add([]byte{'C', 'T', 1, 2, 255, 255})
	f.Add([]byte("CT"))
	f.Add([]byte("*1\r\n$4\r\nPING\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		req, err := ReadHeader(r)
		if err != nil {
			return
		}
		b, err := AppendHeader(nil, req)
		if err != nil {
			t.Fatalf("accepted header does not encode: %v", err)
		}
		if !bytes.Equal(b, in[:len(b)]) {
			t.Fatalf("round trip: got %x, want %x", b, in[:len(b)])
		}
		if r.Len() != len(in)-len(b) {
			t.Fatalf("read past the header")
		}
	})
}

// FuzzReadFrame: control frames from a peer never panic, never return more
// than the limit (MaxFrameSize from clients, MaxServerFrameSize from the
// gateway), never read past the frame, and a refused length is refused
// after the 5-byte header alone.
func FuzzReadFrame(f *testing.F) {
	var b bytes.Buffer
	_ = WriteJSON(&b, FrameWelcome, Welcome{OK: true, Target: &TargetInfo{Name: "x", Nodes: []NodeInfo{{Addr: "a:1"}}}})
	f.Add(b.Bytes())
	f.Add([]byte{FramePing, 0, 0, 0, 0})
	f.Add([]byte{FrameHello, 0xff, 0xff, 0xff, 0xff})          // 4 GiB
	f.Add([]byte{FrameHello, 0, 0x10, 0, 0})                   // 1 MiB, the old limit
	f.Add([]byte{FrameHello, 0, 1, 0, 0})                      // exactly 64 KiB, no body
	f.Add([]byte{FrameHello, 0, 1, 0, 1})                      // 64 KiB + 1
	f.Add([]byte{FrameTopology, 0, 0, 0, 3, '{', '}', ' ', 9}) // trailing byte
	f.Add([]byte{FrameHello, 0, 0})                            // short header
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
			if len(p) > limit || r.n != 5+len(p) || typ != in[0] {
				t.Fatalf("bad frame decode: type %d len %d from %d bytes (read %d)", typ, len(p), len(in), r.n)
			}
		}
	})
}

func FuzzReadStatus(f *testing.F) {
	f.Add(AppendStatus(nil, StatusOK, ""))
	f.Add(AppendStatus(nil, StatusDenied, "no"))
	f.Add([]byte{2, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		err := ReadStatus(bytes.NewReader(in))
		var se *StatusError
		if errors.As(err, &se) && len(se.Message) > 1024 {
			t.Fatalf("message longer than the limit: %d", len(se.Message))
		}
	})
}
