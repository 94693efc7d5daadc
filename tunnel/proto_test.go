package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
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
		{Kind: KindProxy, Target: "prod-redis", Node: "10.0.1.231:6379", Resumable: true, ID: 1<<63 | 5, Token: ResumeToken{1, 2, 3, 15: 0xff}},
		{Kind: KindResume, Resumable: true, ID: 0, Recv: 1<<64 - 1},
		{Kind: KindResume, Resumable: true, ID: 42, Token: ResumeToken{9}, Recv: 8 << 20},
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
	if _, err := AppendHeader(nil, OpenRequest{Kind: KindResume}); !errors.Is(err, ErrBadFlags) {
		t.Fatalf("resume without Resumable: got %v, want ErrBadFlags", err)
	}
	cases := map[string]struct {
		in   []byte
		want error
	}{
		"bad magic":              {[]byte("GET / HTTP/1.1\r\n"), ErrBadMagic},
		"bad version":            {[]byte{'C', 'T', 9, 2, 0, 0}, ErrBadVersion},
		"bad kind":               {[]byte{'C', 'T', 1, 7, 0, 0}, ErrBadKind},
		"truncated":              {[]byte{'C', 'T', 1, 2, 5, 0, 'a'}, io.ErrUnexpectedEOF},
		"empty":                  {nil, io.EOF},
		"v2 no flags":            {[]byte{'C', 'T', 2, 2, 0, 0, 0}, ErrBadFlags},
		"v2 unknown flag":        {[]byte{'C', 'T', 2, 2, 3, 0, 0}, ErrBadFlags},
		"v2 resumable control":   {[]byte{'C', 'T', 2, 1, 1, 0, 0}, ErrBadFlags},
		"v2 bad kind":            {[]byte{'C', 'T', 2, 9, 1, 0, 0}, ErrBadKind},
		"v1 resume kind":         {[]byte{'C', 'T', 1, 3, 0, 0}, ErrBadKind},
		"v2 truncated id":        {[]byte{'C', 'T', 2, 2, 1, 0, 0, 1, 2, 3}, io.ErrUnexpectedEOF},
		"v2 resume without recv": {append([]byte{'C', 'T', 2, 3, 1, 0, 0}, make([]byte, 28)...), io.ErrUnexpectedEOF},
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

// FuzzReadHeader: a peer controls these bytes; the decoder must never
// panic, never read past the header, and round-trip what it accepts.
func FuzzReadHeader(f *testing.F) {
	seed := func(r OpenRequest) []byte { b, _ := AppendHeader(nil, r); return b }
	f.Add(seed(OpenRequest{Kind: KindControl, Target: "prod"}))
	f.Add(seed(OpenRequest{Kind: KindProxy, Target: "prod", Node: "10.0.1.1:6379"}))
	f.Add([]byte{'C', 'T', 1, 2, 255, 255})
	f.Add(seed(OpenRequest{Kind: KindProxy, Target: "prod", Node: "10.0.1.1:6379", Resumable: true, ID: 1, Token: ResumeToken{7}}))
	f.Add(seed(OpenRequest{Kind: KindResume, Resumable: true, ID: 1<<64 - 1, Recv: 1 << 40}))
	f.Add([]byte{'C', 'T', 2, 3, 1, 255, 255})
	f.Add([]byte{'C', 'T', 2, 2, 0, 0, 0})
	f.Add([]byte{'C', 'T', 2, 1, 1, 0, 0})
	f.Add([]byte{'C', 'T', 3, 2, 1, 0, 0})
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

// TestAsStatusError: a refusal is found through wrapping, anything else is
// not one, and the checks at a stream's clean end (nil, io.EOF) allocate
// nothing.
func TestAsStatusError(t *testing.T) {
	refusal := &StatusError{Code: StatusDenied, Message: "no"}
	if se, ok := AsStatusError(fmt.Errorf("open: %w", refusal)); !ok || se != refusal {
		t.Fatalf("wrapped refusal: %v %v", se, ok)
	}
	for _, err := range []error{nil, io.EOF, errors.New("other"), fmt.Errorf("x: %w", io.EOF)} {
		if se, ok := AsStatusError(err); ok || se != nil {
			t.Fatalf("%v taken for a refusal: %v", err, se)
		}
	}
	if n := testing.AllocsPerRun(100, func() {
		_, _ = AsStatusError(nil)
		_, _ = AsStatusError(io.EOF)
	}); n != 0 {
		t.Fatalf("nil and io.EOF: %.0f allocations, want 0", n)
	}
}
