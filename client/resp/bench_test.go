package resp

import (
	"io"
	"net"
	"strings"
	"testing"
)

// repeatReader returns its payload n times, at most chunk bytes per Read, like a
// socket. It has no WriteTo, so io.Copy cannot skip the buffer.
type repeatReader struct {
	payload []byte
	n       int
	off     int
	chunk   int
}

func (r *repeatReader) Read(b []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	b = b[:min(len(b), r.chunk)]
	k := 0
	for k < len(b) && r.n > 0 {
		c := copy(b[k:], r.payload[r.off:])
		k += c
		r.off += c
		if r.off == len(r.payload) {
			r.off = 0
			r.n--
		}
	}
	return k, nil
}

// discard is io.Discard without ReadFrom.
type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }

// getReplies is one 64 KiB-ish batch of pipelined GET replies with values of size.
func getReplies(size int) []byte {
	one := bulk(strings.Repeat("v", size))
	return []byte(strings.Repeat(one, max(1, 64<<10/len(one))))
}

func getRequests() []byte {
	one := cmd("GET", "key:000000001")
	return []byte(strings.Repeat(one, 64<<10/len(one)))
}

var benchSizes = []struct {
	name string
	size int
}{{"3B", 3}, {"100B", 100}, {"1KiB", 1024}, {"16KiB", 16 << 10}}

type copyFunc func(c *Conn, dst io.Writer, src io.Reader) (int64, error)

func ioCopy(_ *Conn, dst io.Writer, src io.Reader) (int64, error) { return io.Copy(dst, src) }

// ioCopy64K copies with CopyReplies's buffer size, to tell parsing apart from
// fewer system calls.
func ioCopy64K(_ *Conn, dst io.Writer, src io.Reader) (int64, error) {
	return io.CopyBuffer(dst, src, make([]byte, bufSize))
}

func copyReplies(c *Conn, dst io.Writer, src io.Reader) (int64, error) {
	return c.CopyReplies(dst, src)
}

func copyRequests(c *Conn, dst io.Writer, src io.Reader) (int64, error) {
	return c.CopyRequests(dst, src)
}

// benchMem copies b.N batches from memory to nowhere in one call: the cost of the
// copy loop alone, the harshest comparison.
func benchMem(b *testing.B, payload []byte, f copyFunc) {
	c := NewConn(Options{Map: testMap})
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	n, err := f(c, discard{}, &repeatReader{payload: payload, n: b.N, chunk: 64 << 10})
	if err != nil || n != int64(b.N)*int64(len(payload)) {
		b.Fatalf("copied %d, %v", n, err)
	}
}

// benchTCP copies b.N batches from one loopback TCP connection to another, as a
// proxy does.
func benchTCP(b *testing.B, payload []byte, f copyFunc) {
	in, inPeer := tcpPair(b)
	out, outPeer := tcpPair(b)
	go func() {
		_, _ = (&repeatReader{payload: payload, n: b.N, chunk: 1 << 20}).WriteTo(inPeer)
		inPeer.Close()
	}()
	done := make(chan int64)
	go func() {
		n, _ := io.Copy(discard{}, outPeer)
		done <- n
	}()
	c := NewConn(Options{Map: testMap})
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	n, err := f(c, out, in)
	out.Close()
	got := <-done
	if err != nil || n != int64(b.N)*int64(len(payload)) || got != n {
		b.Fatalf("copied %d (received %d), %v", n, got, err)
	}
}

// WriteTo writes everything to w in chunks.
func (r *repeatReader) WriteTo(w io.Writer) (int64, error) {
	buf := make([]byte, r.chunk)
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err != nil {
			return total, nil
		}
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		tb.Fatal(r.err)
	}
	tb.Cleanup(func() { a.Close(); r.c.Close() })
	return a, r.c
}

func BenchmarkIOCopy_PipelinedGET(b *testing.B) {
	for _, s := range benchSizes {
		b.Run("mem/"+s.name, func(b *testing.B) { benchMem(b, getReplies(s.size), ioCopy) })
		b.Run("tcp/"+s.name, func(b *testing.B) { benchTCP(b, getReplies(s.size), ioCopy) })
	}
}

func BenchmarkIOCopyBuffer64K_PipelinedGET(b *testing.B) {
	for _, s := range benchSizes {
		b.Run("mem/"+s.name, func(b *testing.B) { benchMem(b, getReplies(s.size), ioCopy64K) })
		b.Run("tcp/"+s.name, func(b *testing.B) { benchTCP(b, getReplies(s.size), ioCopy64K) })
	}
}

func BenchmarkCopyReplies_PipelinedGET(b *testing.B) {
	for _, s := range benchSizes {
		b.Run("mem/"+s.name, func(b *testing.B) { benchMem(b, getReplies(s.size), copyReplies) })
		b.Run("tcp/"+s.name, func(b *testing.B) { benchTCP(b, getReplies(s.size), copyReplies) })
	}
}

func BenchmarkIOCopy_PipelinedGETRequests(b *testing.B) {
	b.Run("mem", func(b *testing.B) { benchMem(b, getRequests(), ioCopy) })
	b.Run("tcp", func(b *testing.B) { benchTCP(b, getRequests(), ioCopy) })
}

func BenchmarkCopyRequests_PipelinedGET(b *testing.B) {
	b.Run("mem", func(b *testing.B) { benchMem(b, getRequests(), copyRequests) })
	b.Run("tcp", func(b *testing.B) { benchTCP(b, getRequests(), copyRequests) })
}
