package resp

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
)

// bigNodes is a CLUSTER NODES text of n lines, each node at 10.0.1.231:6379
// when known is set, else at an unknown address.
func bigNodes(n int, known bool) (text, want string) {
	var t, w strings.Builder
	for i := range n {
		id := fmt.Sprintf("%040x", i)
		host := "10.8.0.1"
		if known {
			host = "10.0.1.231"
		}
		fmt.Fprintf(&t, "%s %s:6379@16379 master - 0 1426238316232 2 connected %d\n", id, host, i)
		if known {
			host = "127.0.0.1"
		}
		port := "6379"
		if known {
			port = "6380"
		}
		fmt.Fprintf(&w, "%s %s:%s@16379 master - 0 1426238316232 2 connected %d\n", id, host, port, i)
	}
	return t.String(), w.String()
}

func TestCopyReplies_LargeTopologyReply(t *testing.T) {
	text, want := bigNodes(3000, true) // ~300 KB: more than one read buffer
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"whole": nil, "onebyte": iotest.OneByteReader, "half": iotest.HalfReader,
	} {
		t.Run(name, func(t *testing.T) {
			req := cmd("GET", "a") + cmd("CLUSTER", "NODES") + cmd("GET", "b")
			_, got, _ := proxy(t, Options{Map: testMap}, req, bulk("x")+bulk(text)+bulk("y"), wrap)
			if got != bulk("x")+bulk(want)+bulk("y") {
				t.Errorf("large CLUSTER NODES reply not rewritten (got %d bytes)", len(got))
			}
		})
	}
}

func TestCopyReplies_TooLargeTopologyReply(t *testing.T) {
	text, _ := bigNodes(maxCapture/80, true) // more than maxCapture
	if len(text) <= maxCapture {
		t.Fatalf("test reply of %d bytes is not too large", len(text))
	}
	req := cmd("CLUSTER", "NODES") + cmd("CLUSTER", "NODES")
	small, smallWant := bigNodes(2, true)
	in := bulk(text) + bulk(small)
	_, got, c := proxy(t, Options{Map: testMap}, req, in, nil)
	if got != bulk(text)+bulk(smallWant) {
		t.Errorf("got %d bytes, want the large reply unchanged and the small one rewritten", len(got))
	}
	if c.rep.mode != modePaired {
		t.Errorf("mode = %d, want paired", c.rep.mode)
	}
}

// valueReader produces "$<n>\r\n" + n bytes + "\r\n" + tail without holding
// the value in memory.
type valueReader struct {
	head, tail []byte
	n          int64
	pos        int64 // of the value
}

func (r *valueReader) Read(b []byte) (int, error) {
	switch {
	case len(r.head) > 0:
		k := copy(b, r.head)
		r.head = r.head[k:]
		return k, nil
	case r.pos < r.n:
		k := int64(len(b))
		if k > r.n-r.pos {
			k = r.n - r.pos
		}
		for i := range b[:k] {
			b[i] = "MOVED 1 10.0.1.231:6379\r\n"[(r.pos+int64(i))%25]
		}
		r.pos += k
		return int(k), nil
	case len(r.tail) > 0:
		k := copy(b, r.tail)
		r.tail = r.tail[k:]
		return k, nil
	}
	return 0, io.EOF
}

// checkWriter checks that what is written is a valueReader's output.
type checkWriter struct {
	t       testing.TB
	n       int64
	written int64
	head    []byte
	tail    []byte
	bad     bool
}

func (w *checkWriter) Write(b []byte) (int, error) {
	for _, c := range b {
		i := w.written
		var want byte
		switch {
		case i < int64(len(w.head)):
			want = w.head[i]
		case i < int64(len(w.head))+w.n:
			want = "MOVED 1 10.0.1.231:6379\r\n"[(i-int64(len(w.head)))%25]
		default:
			j := i - int64(len(w.head)) - w.n
			if j >= int64(len(w.tail)) {
				w.bad = true
				return 0, io.ErrShortWrite
			}
			want = w.tail[j]
		}
		if c != want && !w.bad {
			w.t.Errorf("byte %d = %q, want %q", i, c, want)
			w.bad = true
		}
		w.written++
	}
	return len(b), nil
}

// A 512 MiB value streams through without being held, even as the reply to a
// CLUSTER command.
func TestCopyReplies_HugeValueStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 1 GiB")
	}
	n := int64(512 << 20)
	if raceEnabled {
		n = 32 << 20 // the race detector makes each byte slow
	}
	for _, request := range []string{cmd("GET", "big"), cmd("CLUSTER", "NODES")} {
		c := NewConn(Options{Map: testMap})
		if _, err := c.CopyRequests(io.Discard, strings.NewReader(request+cmd("GET", "x"))); err != nil {
			t.Fatal(err)
		}
		head := []byte(fmt.Sprintf("$%d\r\n", n))
		tail := []byte("\r\n-MOVED 2 10.0.1.230:6379\r\n")
		wantTail := []byte("\r\n-MOVED 2 127.0.0.1:6379\r\n")
		w := &checkWriter{t: t, n: n, head: head, tail: wantTail}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		got, err := c.CopyReplies(w, &valueReader{head: head, tail: tail, n: n})
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
			t.Errorf("%q: allocated %d bytes", request, alloc)
		}
		if err != nil || w.bad || got != int64(len(head))+n+int64(len(wantTail)) || got != w.written {
			t.Errorf("%q: CopyReplies = %d, %v", request, got, err)
		}
	}
}

// Replies are written as soon as they are parsed, without waiting for more.
func TestCopyReplies_NoAddedLatency(t *testing.T) {
	pr, pw := io.Pipe()
	c := NewConn(Options{Map: testMap})
	if _, err := c.CopyRequests(io.Discard, strings.NewReader(cmd("GET", "a")+cmd("CLUSTER", "NODES")+cmd("GET", "b"))); err != nil {
		t.Fatal(err)
	}
	out := make(chan []byte, 10)
	done := make(chan error, 1)
	go func() {
		_, err := c.CopyReplies(chanWriter(out), pr)
		done <- err
	}()
	expect := func(send, want string) {
		t.Helper()
		if _, err := pw.Write([]byte(send)); err != nil {
			t.Fatal(err)
		}
		var got []byte
		for len(got) < len(want) {
			got = append(got, <-out...)
		}
		if string(got) != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	expect("$1\r\na\r\n$", "$1\r\na\r\n")
	text, want := bigNodes(2, true)
	expect(fmt.Sprintf("%d\r\n%s", len(text), text[:10]), "")
	expect(text[10:]+"\r\n", bulk(want))
	expect("-MOVED 3 10.0.1.232:6379\r\n", "-MOVED 3 127.0.0.1:6381\r\n")
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(out) != 0 {
		t.Errorf("unexpected output %q", <-out)
	}
}

type chanWriter chan []byte

func (w chanWriter) Write(b []byte) (int, error) {
	w <- bytes.Clone(b)
	return len(b), nil
}
