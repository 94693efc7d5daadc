package resp

import (
	"strings"
	"testing"
)

func TestConn_ManyPipelinedClusterCommands(t *testing.T) {
	const n = 20000
	small := "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$10\r\n10.0.1.231\r\n:6379\r\n"
	smallWant := "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:6380\r\n"
	req := strings.Repeat(cmd("CLUSTER", "SLOTS")+cmd("GET", "k"), n)
	rep := strings.Repeat(small+bulk("v"), n)
	want := strings.Repeat(smallWant+bulk("v"), n)
	_, got, c := proxy(t, Options{Map: testMap}, req, rep, nil)
	if got != want {
		t.Errorf("not every reply rewritten")
	}
	if c.rep.mode != modePaired || c.outstanding.Load() != 0 {
		t.Errorf("mode %d, %d outstanding", c.rep.mode, c.outstanding.Load())
	}
}

func TestConn_TooManyOutstanding(t *testing.T) {
	small := "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$10\r\n10.0.1.231\r\n:6379\r\n"
	smallWant := "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:6380\r\n"
	req := strings.Repeat(cmd("CLUSTER", "SLOTS"), maxPending+10)
	rep := strings.Repeat(small, maxPending+10)
	want := strings.Repeat(smallWant, maxPending) + strings.Repeat(small, 10)
	_, got, c := proxy(t, Options{Map: testMap}, req, rep, nil)
	if got != want {
		t.Errorf("want the first %d replies rewritten, the rest not", maxPending)
	}
	if c.rep.mode != modeUnpaired {
		t.Errorf("mode %d, want unpaired", c.rep.mode)
	}
}

// Every command name the request parser reacts to passes the fast path's filter.
func TestInteresting(t *testing.T) {
	for _, name := range []string{"exec", "discard", "reset", "multi", "watch", "quit", "cluster",
		"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
		"monitor", "client", "sync", "psync", "CLUSTER", "Exec"} {
		if !interesting([]byte(name)) {
			t.Errorf("interesting(%q) = false", name)
		}
	}
}

func TestConn_OnRedirectBeforeMap(t *testing.T) {
	var calls []string
	m := func(up string) (string, bool) {
		calls = append(calls, "map "+up)
		return testMap(up)
	}
	on := func(kind string, slot int, up string) { calls = append(calls, "redirect "+kind+" "+up) }
	_, got, _ := proxy(t, Options{Map: m, OnRedirect: on}, cmd("GET", "k"), "-ASK 5 10.0.1.231:6379\r\n", nil)
	if got != "-ASK 5 127.0.0.1:6380\r\n" {
		t.Errorf("got %q", got)
	}
	if strings.Join(calls, "|") != "redirect ASK 10.0.1.231:6379|map 10.0.1.231:6379" {
		t.Errorf("calls %q", calls)
	}
}

func TestConn_NilMapCopies(t *testing.T) {
	_, got, c := proxy(t, Options{}, cmd("CLUSTER", "NODES"), "-MOVED 1 10.0.1.231:6379\r\n"+nodesResp2, nil)
	if got != "-MOVED 1 10.0.1.231:6379\r\n"+nodesResp2 || c.rep.mode != modeRaw {
		t.Errorf("got %q (mode %d)", got, c.rep.mode)
	}
}

func TestConn_BadMapAnswerIgnored(t *testing.T) {
	m := func(string) (string, bool) { return "127.0.0.1:1\r\n+OK", true }
	_, got, _ := proxy(t, Options{Map: m}, cmd("GET", "k"), "-MOVED 1 10.0.1.231:6379\r\n", nil)
	if got != "-MOVED 1 10.0.1.231:6379\r\n" {
		t.Errorf("got %q", got)
	}
}
