package resp

import (
	"bytes"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// fuzzMap knows every node on port 6379 and the empty host.
func fuzzMap(up string) (string, bool) {
	switch {
	case strings.HasSuffix(up, ":6379"):
		return "127.0.0.1:16379", true
	case strings.HasPrefix(up, ":"):
		return "[::1]:7", true
	}
	return "", false
}

func noMap(string) (string, bool) { return "", false }

// requestSeeds are named edge cases of the client side.
var requestSeeds = []struct{ name, data string }{
	{"pipelined gets", strings.Repeat(cmd("GET", "k"), 3)},
	{"cluster commands", cmd("CLUSTER", "SLOTS") + cmd("cluster", "shards") + cmd("CLUSTER", "NODES") + cmd("CLUSTER", "REPLICAS", "x")},
	{"multi exec", cmd("MULTI") + cmd("CLUSTER", "NODES") + cmd("WATCH", "x") + cmd("EXEC")},
	{"multi discard", cmd("MULTI") + cmd("CLUSTER", "NODES") + cmd("DISCARD") + cmd("CLUSTER", "NODES")},
	{"subscribe", cmd("SUBSCRIBE", "a") + cmd("CLUSTER", "NODES")},
	{"client reply", cmd("CLIENT", "REPLY", "OFF") + cmd("CLUSTER", "NODES")},
	{"psync", cmd("PSYNC", "?", "-1") + "garbage"},
	{"inline", "PING\r\ncluster nodes\n  \r\n\"CLUSTER\" 'slots'\r\n"},
	{"inline escapes", "\"clu\\x73ter\" \"no\\des\" 'a\\'b'\r\n"},
	{"inline unbalanced", "\"cluster nodes\r\n"},
	{"inline nul", "cluster\x00 nodes\r\n"},
	{"empty multibulk", "*0\r\n*-1\r\n" + cmd("CLUSTER", "NODES")},
	{"bad dollar", "*1\r\n+PING\r\n"},
	{"no lf", "*1\r$4\r\nPING\r\n"},
	{"unchecked crlf", "*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n"},
	{"long argument", cmd("SET", strings.Repeat("k", 40), strings.Repeat("v", 300))},
	{"inline too long", strings.Repeat("x", maxInline+1) + "\r\n" + cmd("CLUSTER", "NODES")},
	{"huge count", "*99999999999999999999\r\n"},
	{"negative length", "*1\r\n$-5\r\n"},
}

func FuzzCopyRequests(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(s.data))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var queues [][]entry
		var idx []int64
		for _, wrap := range []func(io.Reader) io.Reader{nil, iotest.OneByteReader, iotest.HalfReader} {
			c := NewConn(Options{Map: fuzzMap})
			var src io.Reader = bytes.NewReader(data)
			if wrap != nil {
				src = wrap(src)
			}
			var out bytes.Buffer
			n, err := c.CopyRequests(&out, src)
			if err != nil || n != int64(len(data)) || !bytes.Equal(out.Bytes(), data) {
				t.Fatalf("CopyRequests = %d, %v; requests changed", n, err)
			}
			queues = append(queues, c.queue)
			idx = append(idx, c.req.idx)
		}
		// However the bytes arrive, the same replies are expected.
		for i := 1; i < len(queues); i++ {
			if !reflect.DeepEqual(queues[i], queues[0]) || idx[i] != idx[0] {
				t.Fatalf("reads split %d ways give %v (next %d), whole reads give %v (next %d)",
					i, fmtQueue(queues[i]), idx[i], fmtQueue(queues[0]), idx[0])
			}
		}
	})
}

func fmtQueue(q []entry) string {
	var b strings.Builder
	for _, e := range q {
		fmt.Fprintf(&b, "{%d %d", e.idx, e.kind)
		if e.exec != nil {
			fmt.Fprintf(&b, " %v", *e.exec)
		}
		b.WriteString("} ")
	}
	return b.String()
}

// replySeeds are named edge cases of the server side, each with the requests
// that asked for it.
var replySeeds = []struct{ name, requests, replies string }{
	{"moved", cmd("GET", "a"), "-MOVED 1 10.0.1.231:6379\r\n"},
	{"ask empty host", cmd("GET", "a"), "-ASK 1 :6379\r\n"},
	{"slots resp2", cmd("CLUSTER", "SLOTS"), slotsResp2},
	{"slots resp3", cmd("CLUSTER", "SLOTS"), slotsResp3Hostname},
	{"slots null endpoint", cmd("CLUSTER", "SLOTS"), slotsNullEndpoint},
	{"shards resp2", cmd("CLUSTER", "SHARDS"), shardsResp2},
	{"shards resp3", cmd("CLUSTER", "SHARDS"), shardsResp3},
	{"nodes", cmd("CLUSTER", "NODES"), nodesResp2},
	{"nodes verbatim", cmd("CLUSTER", "NODES"), nodesResp3},
	{"replicas", cmd("CLUSTER", "REPLICAS", "x"), replicas},
	{"exec", cmd("MULTI") + cmd("CLUSTER", "NODES") + cmd("EXEC"), "+OK\r\n+QUEUED\r\n*1\r\n" + nodesResp2},
	{"lookalikes", strings.Repeat(cmd("GET", "a"), 8), lookalikes},
	{"push and attribute", cmd("CLUSTER", "NODES"), ">2\r\n$10\r\ninvalidate\r\n_\r\n|1\r\n+a\r\n:1\r\n" + nodesResp3},
	{"nested empty", cmd("CLUSTER", "SLOTS"), "*3\r\n*0\r\n*1\r\n*-1\r\n%0\r\n"},
	{"long line", cmd("GET", "a"), "+" + strings.Repeat("x", 3000) + "\r\n-MOVED 1 a:6379\r\n"},
	{"long line no cr", cmd("GET", "a"), "+" + strings.Repeat("x", 3000) + "\n-MOVED 1 a:6379\r\n"},
	{"bulk no crlf", cmd("GET", "a"), "$1\r\nab\r\n-MOVED 1 a:6379\r\n"},
	{"streamed", cmd("GET", "a"), "$?\r\n;1\r\na\r\n;0\r\n"},
	{"psync", cmd("PSYNC", "?", "-1"), "+FULLRESYNC x 0\r\n$3\r\nabc-MOVED 1 a:6379\r\n"},
	{"deep", cmd("CLUSTER", "SLOTS"), strings.Repeat("*1\r\n", 600) + ":1\r\n"},
	{"repeated headers", strings.Repeat(cmd("GET", "a"), 12) + cmd("CLUSTER", "NODES") + cmd("GET", "a"),
		strings.Repeat(bulk("abc"), 6) + "-MOVED 1 a:6379\r\n" + strings.Repeat(bulk("abc"), 5) + nodesResp2 + "$3\r\nabcXY"},
}

func FuzzCopyReplies(f *testing.F) {
	for _, s := range replySeeds {
		f.Add([]byte(s.requests), []byte(s.replies))
	}
	f.Fuzz(func(t *testing.T, requests, replies []byte) {
		run := func(m AddrMap, wrap func(io.Reader) io.Reader) []byte {
			c := NewConn(Options{Map: m, OnRedirect: func(string, int, string) {}})
			if _, err := c.CopyRequests(io.Discard, bytes.NewReader(requests)); err != nil {
				t.Fatal(err)
			}
			var src io.Reader = bytes.NewReader(replies)
			if wrap != nil {
				src = wrap(src)
			}
			var out bytes.Buffer
			n, err := c.CopyReplies(&out, src)
			if err != nil || n != int64(out.Len()) {
				t.Fatalf("CopyReplies = %d, %v; wrote %d", n, err, out.Len())
			}
			return out.Bytes()
		}
		// A map that knows nothing changes nothing.
		if got := run(noMap, nil); !bytes.Equal(got, replies) {
			t.Fatalf("with an empty map, replies changed:\n got %q\nwant %q", got, replies)
		}
		// However the bytes arrive, the output is the same.
		whole := run(fuzzMap, nil)
		for _, wrap := range []func(io.Reader) io.Reader{iotest.OneByteReader, iotest.HalfReader} {
			if got := run(fuzzMap, wrap); !bytes.Equal(got, whole) {
				t.Fatalf("split reads give\n%q\nwhole reads give\n%q", got, whole)
			}
		}
		// Well-formed replies stay well-formed, one for one.
		if in, ok := countValues(replies); ok {
			if out, ok := countValues(whole); !ok || out != in {
				t.Fatalf("%d values became %d (well-formed: %v):\n%q", in, out, ok, whole)
			}
		}
	})
}

// countValues counts the top-level values of b, reporting false unless b is
// nothing but complete, well-formed values.
func countValues(b []byte) (int, bool) {
	n := 0
	for len(b) > 0 {
		v, k, err := decode(b, 0)
		if err != nil || k == 0 {
			return n, false
		}
		_ = v
		b = b[k:]
		n++
	}
	return n, true
}
