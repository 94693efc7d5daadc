package main

import (
	"context"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/cachetun/cachetun/test/testenv"
)

// startRedis runs a real redis-server on a free loopback port for the
// test and returns its address; redis-benchmark must be there too.
func startRedis(t *testing.T) string {
	t.Helper()
	testenv.RequireBinary(t, "redis-benchmark")
	return testenv.StartRedis(t).Addr
}

// TestGet50CSV parses the CSV of a real redis-benchmark run of the bench's
// GET -c 50 (on loopback, -n 500): the rate and p99 are positive and the
// p99 is below 10 s.
func TestGet50CSV(t *testing.T) {
	addr := startRedis(t)
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("redis-benchmark", "-h", host, "-p", port, "-c", "50", "-n", "500", "--csv", "GET", get50Key).Output()
	if err != nil {
		t.Fatal(err)
	}
	rps, p99, err := parseGet50(out)
	if err != nil {
		t.Fatalf("%v in %q", err, out)
	}
	if rps <= 0 || p99 <= 0 || p99 > 10_000 {
		t.Fatalf("rps %v, p99 %v ms from %q", rps, p99, out)
	}
	if _, _, err := parseGet50([]byte(`"test","rps"` + "\n")); err == nil {
		t.Fatal("a CSV without a GET row parsed")
	}
}

// TestTransfers runs the 32 MiB SET and GET and the 8 parallel GETs
// through go-redis against a real redis-server on loopback: with a 60 s
// bound they complete (not cut, positive rate); with a 1 ms bound the
// 32 MiB SET is cut (redis does not answer a 32 MiB SET in 1 ms) and
// counts what redis had received, from CLIENT LIST.
func TestTransfers(t *testing.T) {
	addr := startRedis(t)
	w := &wan{ctx: context.Background(), bulkCap: 60 * time.Second} // laptop, gateway "": this namespace
	rdb := newClient("", addr, 30*time.Second)
	defer rdb.Close()
	for _, kv := range []struct {
		k string
		n int
	}{{"wan:big", bigSize}, {"wan:bulk", bulkSize}} {
		if err := setValue(w.ctx, rdb.Client, kv.k, kv.n); err != nil {
			t.Fatal(err)
		}
	}
	getC, setC, bulkC, err := w.transferClients(addr)
	if err != nil {
		t.Fatal(err)
	}
	for name, run := range map[string]func() (transfer, error){
		"GET 32 MiB": func() (transfer, error) { return w.bigGet([]*oneConn{getC}, "wan:big", bigSize) },
		"SET 32 MiB": func() (transfer, error) { return w.bigSet(setC, addr) },
		"8 × GET":    func() (transfer, error) { return w.bigGet(bulkC, "wan:bulk", bulkSize) },
	} {
		tr, err := run()
		if err != nil || tr.cut || tr.rate <= 0 {
			t.Fatalf("%s: %+v, %v: want a complete transfer", name, tr, err)
		}
	}
	if n, err := rdb.StrLen(w.ctx, "wan:set").Result(); err != nil || n != bigSize {
		t.Fatalf("STRLEN wan:set = %d, %v; want %d", n, err, bigSize)
	}

	w.bulkCap = time.Millisecond
	_, setC, _, err = w.transferClients(addr)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := w.bigSet(setC, addr)
	if err != nil || !tr.cut {
		t.Fatalf("SET with a 1 ms bound: %+v, %v: want a cut", tr, err)
	}
	// How much redis had received depends on the scheduler (all of it,
	// at times, with the +OK not yet read); CLIENT LIST answered (no
	// error) and the count is within the value.
	if tr.bytes < 0 || tr.bytes > bigSize {
		t.Fatalf("cut SET: %d bytes received (%s), want 0 to %d", tr.bytes, tr.note, bigSize)
	}
	t.Logf("cut SET: %s", tr.note)
}

// TestGet50Requests: GET -c 50 runs whole rounds of 50 requests, about
// the planned length, at least 4 rounds.
func TestGet50Requests(t *testing.T) {
	for _, c := range []struct {
		rtt, d time.Duration
		want   int
	}{
		{80 * time.Millisecond, 1500 * time.Millisecond, 950}, // 18.75 rounds → 19
		{20 * time.Millisecond, 1500 * time.Millisecond, 3750},
		{200 * time.Millisecond, 1500 * time.Millisecond, 400}, // 7.5 → 8
		{200 * time.Millisecond, 100 * time.Millisecond, 200},  // at least 4 rounds
	} {
		if got := get50Requests(c.rtt, c.d); got != c.want {
			t.Errorf("get50Requests(%v, %v) = %d, want %d", c.rtt, c.d, got, c.want)
		}
	}
}
