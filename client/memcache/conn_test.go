package memcache

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// testMCMap knows the nodes 10.0.0.1:11211 (port 7001) and
// 10.0.0.2:11211 (7002), by IP or by host name.
func testMCMap(host, ip, port string) (string, bool) {
	switch {
	case ip == "10.0.0.1" && port == "11211", host == "node1.internal" && port == "11211":
		return "127.0.0.1:7001", true
	case ip == "10.0.0.2" && port == "11211":
		return "127.0.0.1:7002", true
	}
	return "", false
}

func mcBody(version int, nodes ...string) string {
	return strconv.Itoa(version) + "\n" + strings.Join(nodes, " ") + "\n"
}

func mcConfigReply(body string) string {
	return "CONFIG cluster 0 " + strconv.Itoa(len(body)) + "\r\n" + body + "\r\nEND\r\n"
}

func mcLegacyValue(body string) string {
	return "VALUE AmazonElastiCache:cluster 0 " + strconv.Itoa(len(body)) + "\r\n" + body + "\r\nEND\r\n"
}

// runMC passes requests and then replies through one Conn, each
// side reading one byte at a time when slow, and returns what each side
// wrote.
func runMC(t testing.TB, requests, replies string, slow bool) (string, string) {
	m := NewConn(testMCMap)
	wrap := func(s string) io.Reader {
		if slow {
			return iotest.OneByteReader(strings.NewReader(s))
		}
		return strings.NewReader(s)
	}
	var up, down bytes.Buffer
	if _, err := m.CopyRequests(&up, wrap(requests)); err != nil {
		t.Fatalf("CopyRequests: %v", err)
	}
	if _, err := m.CopyReplies(&down, wrap(replies)); err != nil {
		t.Fatalf("CopyReplies: %v", err)
	}
	return up.String(), down.String()
}

func TestConn(t *testing.T) {
	both := mcBody(7, "node1.internal|10.0.0.1|11211", "node2.internal|10.0.0.2|11211")
	bothLocal := mcBody(7, "127.0.0.1|127.0.0.1|7001", "127.0.0.1|127.0.0.1|7002")
	lookalike := mcConfigReply(both) // a stored value that looks like a reply
	cases := []struct {
		name              string
		requests, replies string
		want              string
	}{{
		name:     "config get cluster",
		requests: "config get cluster\r\n",
		replies:  mcConfigReply(both),
		want:     mcConfigReply(bothLocal),
	}, {
		name:     "legacy get",
		requests: "get AmazonElastiCache:cluster\r\n",
		replies:  mcLegacyValue(both),
		want:     mcLegacyValue(bothLocal),
	}, {
		name:     "host name only",
		requests: "config get cluster\r\n",
		replies:  mcConfigReply(mcBody(1, "node1.internal||11211")),
		want:     mcConfigReply(mcBody(1, "127.0.0.1|127.0.0.1|7001")),
	}, {
		name:     "unknown node left alone",
		requests: "config get cluster\r\n",
		replies:  mcConfigReply(mcBody(2, "x|10.9.9.9|11211", "node2.internal|10.0.0.2|11211")),
		want:     mcConfigReply(mcBody(2, "x|10.9.9.9|11211", "127.0.0.1|127.0.0.1|7002")),
	}, {
		name:     "not an endpoint",
		requests: "config get cluster\r\n",
		replies:  "ERROR\r\n",
		want:     "ERROR\r\n",
	}, {
		name:     "a value that looks like a reply is never touched",
		requests: "get k\r\nget k k2\r\nconfig get cluster\r\n",
		replies: "VALUE k 0 " + strconv.Itoa(len(lookalike)) + "\r\n" + lookalike + "\r\nEND\r\n" +
			"VALUE k 0 " + strconv.Itoa(len(lookalike)) + "\r\n" + lookalike + "\r\nVALUE k2 5 3 99\r\nabc\r\nEND\r\n" +
			mcConfigReply(both),
		want: "VALUE k 0 " + strconv.Itoa(len(lookalike)) + "\r\n" + lookalike + "\r\nEND\r\n" +
			"VALUE k 0 " + strconv.Itoa(len(lookalike)) + "\r\n" + lookalike + "\r\nVALUE k2 5 3 99\r\nabc\r\nEND\r\n" +
			mcConfigReply(bothLocal),
	}, {
		name: "pipelined with data blocks, noreply, stats and meta",
		requests: "set a 0 0 20\r\nconfig get cluster\r\n\r\n" + "set b 0 0 1 noreply\r\nx\r\n" +
			"stats\r\nmg a v\r\nmg zz v\r\nincr n 1\r\nversion\r\nconfig get cluster\r\n",
		replies: "STORED\r\nSTAT pid 1\r\nSTAT uptime 2\r\nEND\r\nVA 20\r\nconfig get cluster\r\n\r\nEN\r\nNOT_FOUND\r\nVERSION 1.6\r\n" +
			mcConfigReply(both),
		want: "STORED\r\nSTAT pid 1\r\nSTAT uptime 2\r\nEND\r\nVA 20\r\nconfig get cluster\r\n\r\nEN\r\nNOT_FOUND\r\nVERSION 1.6\r\n" +
			mcConfigReply(bothLocal),
	}, {
		name:     "an unknown command ends rewriting",
		requests: "lru_crawler metadump all\r\nconfig get cluster\r\n",
		replies:  "key=a exp=-1\r\nEND\r\n" + mcConfigReply(both),
		want:     "key=a exp=-1\r\nEND\r\n" + mcConfigReply(both),
	}, {
		name:     "quiet meta commands end rewriting",
		requests: "mg a v q\r\nmn\r\nconfig get cluster\r\n",
		replies:  "MN\r\n" + mcConfigReply(both),
		want:     "MN\r\n" + mcConfigReply(both),
	}, {
		name:     "a client error ends rewriting",
		requests: "set a 0 0 1\r\nxyz\r\nconfig get cluster\r\n",
		replies:  "CLIENT_ERROR bad data chunk\r\nERROR\r\n" + mcConfigReply(both),
		want:     "CLIENT_ERROR bad data chunk\r\nERROR\r\n" + mcConfigReply(both),
	}, {
		// A meta command without a key once panicked the parser.
		name:     "a meta command without a key ends rewriting",
		requests: "mg\r\nconfig get cluster\r\n",
		replies:  "CLIENT_ERROR bad command line format\r\n" + mcConfigReply(both),
		want:     "CLIENT_ERROR bad command line format\r\n" + mcConfigReply(both),
	}, {
		name:     "binary protocol",
		requests: "\x80\x0a\x00\x00config get cluster\r\n",
		replies:  mcConfigReply(both),
		want:     mcConfigReply(both),
	}, {
		name:     "a reply nobody asked for",
		requests: "",
		replies:  mcConfigReply(both),
		want:     mcConfigReply(both),
	}}
	for _, tc := range cases {
		for _, slow := range []bool{false, true} {
			name := tc.name
			if slow {
				name += " one byte at a time"
			}
			t.Run(name, func(t *testing.T) {
				up, down := runMC(t, tc.requests, tc.replies, slow)
				if up != tc.requests {
					t.Errorf("requests changed:\ngot  %q\nwant %q", up, tc.requests)
				}
				if down != tc.want {
					t.Errorf("replies:\ngot  %q\nwant %q", down, tc.want)
				}
			})
		}
	}
}

// FuzzConn: requests always pass unchanged; replies pass
// unchanged unless they hold an auto-discovery reply; nothing panics.
func FuzzConn(f *testing.F) {
	body := mcBody(3, "node1.internal|10.0.0.1|11211", "h|10.0.0.2|11211")
	f.Add("config get cluster\r\n", mcConfigReply(body))
	f.Add("get AmazonElastiCache:cluster\r\n", mcLegacyValue(body))
	f.Add("get a b\r\nconfig get cluster\r\n", "VALUE a 0 2\r\nab\r\nEND\r\n"+mcConfigReply(body))
	f.Add("set a 0 0 2\r\nab\r\nconfig get cluster\r\n", "STORED\r\n"+mcConfigReply(body))
	f.Add("stats\r\nconfig get cluster\r\n", "STAT a b\r\nEND\r\nCONFIG cluster 0 99999999\r\n")
	f.Add("mg a v\r\nconfig get cluster\r\n", "VA 3 f\r\nabc\r\n"+mcConfigReply("x\n"))
	f.Add("config get cluster\r\n", "CONFIG cluster 0 -5\r\n")
	f.Add("mg\r\nms\r\nconfig get cluster\r\n", "CLIENT_ERROR bad command line format\r\n")
	f.Fuzz(func(t *testing.T, requests, replies string) {
		m := NewConn(testMCMap)
		var up, down bytes.Buffer
		_, _ = m.CopyRequests(&up, strings.NewReader(requests))
		_, _ = m.CopyReplies(&down, strings.NewReader(replies))
		if up.String() != requests {
			t.Fatalf("requests changed: %q -> %q", requests, up.String())
		}
		if !strings.Contains(replies, "CONFIG cluster") && !strings.Contains(replies, "AmazonElastiCache:cluster") && down.String() != replies {
			t.Fatalf("replies changed: %q -> %q", replies, down.String())
		}
	})
}
