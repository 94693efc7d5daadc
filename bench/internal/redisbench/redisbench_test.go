package redisbench

import (
	"net"
	"os/exec"
	"testing"

	"github.com/cachetun/cachetun/test/testenv"
)

// TestParse reads the CSV of real redis-benchmark runs on loopback (-n
// 200): the rows of -t set,get and of a custom command, by name. Rates are
// positive, p99 latencies positive and below 10 s; a missing row or column
// is an error.
func TestParse(t *testing.T) {
	testenv.RequireBinary(t, "redis-benchmark")
	_, port, _ := net.SplitHostPort(testenv.StartRedis(t).Addr)
	for _, c := range []struct {
		args  []string
		tests []string
	}{
		{[]string{"-t", "set,get"}, []string{"SET", "GET"}},
		{[]string{"GET", "bench:small"}, []string{"GET bench:small"}},
	} {
		argv := append([]string{"-h", "127.0.0.1", "-p", port, "-c", "5", "-n", "200", "--csv"}, c.args...)
		out, err := exec.Command("redis-benchmark", argv...).Output()
		if err != nil {
			t.Fatalf("redis-benchmark %v: %v", c.args, err)
		}
		rows, err := Parse(out)
		if err != nil {
			t.Fatalf("%v in %q", err, out)
		}
		for _, test := range c.tests {
			rps, err1 := rows.Value(test, "rps")
			p99, err2 := rows.Value(test, "p99_latency_ms")
			if err1 != nil || err2 != nil || rps <= 0 || p99 <= 0 || p99 > 10_000 {
				t.Errorf("%s: rps %v (%v), p99 %v ms (%v) from %q", test, rps, err1, p99, err2, out)
			}
		}
		if _, err := rows.Value("INCR", "rps"); err == nil {
			t.Errorf("%v: a row INCR in %q", c.args, out)
		}
		if _, err := rows.Value(c.tests[0], "p42_latency_ms"); err == nil {
			t.Errorf("%v: a column p42_latency_ms in %q", c.args, out)
		}
	}
	if _, err := (Results{}).Value("GET", "rps"); err == nil {
		t.Error("a value without a header row")
	}
}

// TestLastLine: redis-benchmark's progress lines end in \r, its error
// comes last.
func TestLastLine(t *testing.T) {
	for in, want := range map[string]string{
		"GET: rps=1200.0 (overall: 1180.3) avg_msec=0.4\rGET: rps=0.0\rError: Connection reset by peer\n": "Error: Connection reset by peer",
		"one\ntwo\r\n": "two",
		"alone":        "alone",
		"":             "",
	} {
		if got := LastLine(in); got != want {
			t.Errorf("LastLine(%q) = %q, want %q", in, got, want)
		}
	}
}
