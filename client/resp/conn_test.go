package resp

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
)

// testNodes is the cluster of the table tests.
var testNodes = map[string]string{
	"10.0.1.230:6379":        "127.0.0.1:6379",
	"10.0.1.231:6379":        "127.0.0.1:6380",
	"10.0.1.232:6379":        "127.0.0.1:6381",
	"10.0.1.233:6379":        "127.0.0.1:6382",
	"10.0.1.231:6390":        "127.0.0.1:6390", // a TLS port
	"redis-4.internal:6379":  "127.0.0.1:6383",
	"2001:db8::7:6379":       "127.0.0.1:6384",
	":6379":                  "127.0.0.1:6379", // the node this connection is to
	"clustercfg.example:637": "127.0.0.1:1",
}

func testMap(up string) (string, bool) {
	l, ok := testNodes[up]
	return l, ok
}

type redirectRec struct {
	mu  sync.Mutex
	got []string
}

func (r *redirectRec) on(kind string, slot int, up string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, fmt.Sprintf("%s %d %s", kind, slot, up))
}

func (r *redirectRec) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

// proxy runs requests through CopyRequests and then replies through CopyReplies,
// as a real connection would (every request reaches the server before its
// reply comes back), and returns the bytes each side wrote.
func proxy(t testing.TB, opts Options, requests, replies string, wrap func(io.Reader) io.Reader) (gotReq, gotRep string, c *Conn) {
	t.Helper()
	if wrap == nil {
		wrap = func(r io.Reader) io.Reader { return r }
	}
	c = NewConn(opts)
	var req, rep bytes.Buffer
	n, err := c.CopyRequests(&req, wrap(strings.NewReader(requests)))
	if err != nil || n != int64(req.Len()) {
		t.Fatalf("CopyRequests = %d, %v; wrote %d", n, err, req.Len())
	}
	n, err = c.CopyReplies(&rep, wrap(strings.NewReader(replies)))
	if err != nil || n != int64(rep.Len()) {
		t.Fatalf("CopyReplies = %d, %v; wrote %d", n, err, rep.Len())
	}
	return req.String(), rep.String(), c
}

func cmd(args ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.String()
}

func bulk(s string) string { return fmt.Sprintf("$%d\r\n%s\r\n", len(s), s) }

func verbatim(s string) string { return fmt.Sprintf("=%d\r\ntxt:%s\r\n", len(s)+4, s) }

type rewriteCase struct {
	name     string
	requests string
	replies  string
	want     string
	redirs   []string // OnRedirect calls expected, nil: not checked
	mode     int      // reply-side mode expected at the end
}

func runCases(t *testing.T, cases []rewriteCase) {
	t.Helper()
	readers := map[string]func(io.Reader) io.Reader{
		"whole":   nil,
		"onebyte": iotest.OneByteReader,
		"half":    iotest.HalfReader,
	}
	for _, tc := range cases {
		for rname, wrap := range readers {
			t.Run(tc.name+"/"+rname, func(t *testing.T) {
				var rec redirectRec
				gotReq, got, c := proxy(t, Options{Map: testMap, OnRedirect: rec.on}, tc.requests, tc.replies, wrap)
				if c.rep.mode != tc.mode {
					t.Errorf("reply mode = %d, want %d", c.rep.mode, tc.mode)
				}
				if gotReq != tc.requests {
					t.Errorf("requests changed:\n got %q\nwant %q", gotReq, tc.requests)
				}
				if got != tc.want {
					t.Errorf("replies:\n got %q\nwant %q", got, tc.want)
				}
				if tc.redirs != nil && strings.Join(rec.list(), "|") != strings.Join(tc.redirs, "|") {
					t.Errorf("OnRedirect calls:\n got %q\nwant %q", rec.list(), tc.redirs)
				}
			})
		}
	}
}

func TestConn_Redirects(t *testing.T) {
	runCases(t, []rewriteCase{{
		name:     "moved",
		requests: "*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n",
		replies:  "-MOVED 12182 10.0.1.231:6379\r\n",
		want:     "-MOVED 12182 127.0.0.1:6380\r\n",
		redirs:   []string{"MOVED 12182 10.0.1.231:6379"},
	}, {
		name:     "ask",
		requests: "*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n",
		replies:  "-ASK 12182 10.0.1.232:6379\r\n",
		want:     "-ASK 12182 127.0.0.1:6381\r\n",
		redirs:   []string{"ASK 12182 10.0.1.232:6379"},
	}, {
		name:     "moved unknown node",
		requests: "*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n",
		replies:  "-MOVED 1 10.9.9.9:6379\r\n",
		want:     "-MOVED 1 10.9.9.9:6379\r\n",
		redirs:   []string{"MOVED 1 10.9.9.9:6379"},
	}, {
		name:     "moved empty host",
		requests: "*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n",
		replies:  "-MOVED 3999 :6379\r\n",
		want:     "-MOVED 3999 127.0.0.1:6379\r\n",
		redirs:   []string{"MOVED 3999 :6379"},
	}, {
		name:     "moved hostname",
		requests: "*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n",
		replies:  "-MOVED 3999 redis-4.internal:6379\r\n",
		want:     "-MOVED 3999 127.0.0.1:6383\r\n",
	}, {
		name:     "moved ipv6",
		requests: "*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n",
		replies:  "-MOVED 3999 2001:db8::7:6379\r\n",
		want:     "-MOVED 3999 127.0.0.1:6384\r\n",
	}, {
		name:     "redirect valkey",
		requests: "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\nb\r\n",
		replies:  "-REDIRECT 10.0.1.230:6379\r\n",
		want:     "-REDIRECT 127.0.0.1:6379\r\n",
		redirs:   []string{"REDIRECT -1 10.0.1.230:6379"},
	}, {
		name:     "other errors untouched",
		requests: strings.Repeat("*1\r\n$4\r\nPING\r\n", 4),
		replies:  "-ERR MOVED 1 10.0.1.231:6379\r\n-MOVED x 10.0.1.231:6379\r\n-MOVED 1 10.0.1.231:6379 extra\r\n-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
		want:     "-ERR MOVED 1 10.0.1.231:6379\r\n-MOVED x 10.0.1.231:6379\r\n-MOVED 1 10.0.1.231:6379 extra\r\n-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
	}, {
		name:     "pipelined moved among values",
		requests: strings.Repeat("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 5),
		replies:  "$3\r\nbar\r\n-MOVED 1 10.0.1.230:6379\r\n$-1\r\n-ASK 2 10.0.1.233:6379\r\n:5\r\n",
		want:     "$3\r\nbar\r\n-MOVED 1 127.0.0.1:6379\r\n$-1\r\n-ASK 2 127.0.0.1:6382\r\n:5\r\n",
	}, {
		name:     "values that look like redirects are never touched",
		requests: strings.Repeat("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", 6),
		replies:  lookalikes,
		want:     lookalikes,
	}})
}

// lookalikes are replies whose values contain redirect text.
var lookalikes = bulk("-MOVED 1 10.0.1.231:6379") +
	"+MOVED 1 10.0.1.231:6379\r\n" +
	"*2\r\n" + bulk("foo") + bulk("MOVED 1 10.0.1.231:6379") +
	verbatim("MOVED 1 10.0.1.231:6379") +
	">3\r\n" + bulk("message") + bulk("ch") + bulk("-MOVED 1 10.0.1.231:6379\r\n") +
	"%1\r\n" + bulk("k") + bulk("MOVED 1 10.0.1.231:6379") +
	"!29\r\nMOVED 1 10.0.1.231:6379\r\nxxxx\r\n" +
	"|1\r\n+key\r\n-MOVED 1 10.0.1.231:6379\r\n" + bulk("v")
